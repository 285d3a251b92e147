#pragma once
// UTF-8 and byte-level helpers shared by the tokenizer, the decoder and the streaming detokenizer.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv2::utf8 {

// Length of the UTF-8 sequence a lead byte announces (1-4), or 0 for a byte that cannot start one.
int sequence_length(unsigned char lead);

// Decodes the code point starting at s[i] (s must be valid UTF-8 there) and advances i.
uint32_t next(std::string_view s, size_t& i);

// Appends the UTF-8 encoding of a code point.
void append(std::string& out, uint32_t cp);

// Offset of the first byte that makes `s` invalid UTF-8, or npos when it is valid.
size_t find_invalid(std::string_view s);

// What the bytes at a position hold: a complete valid sequence, an invalid one (which
// from_utf8_lossy turns into a single U+FFFD), or the beginning of a valid sequence cut off by the
// end of the buffer. `len` is the number of bytes concerned (at least 1).
enum class Scan { valid, invalid, incomplete };
Scan scan(std::string_view bytes, size_t i, size_t& len);

// Converts bytes to valid UTF-8 exactly as Rust's String::from_utf8_lossy does: every maximal
// prefix of an invalid sequence becomes one U+FFFD (the rule Hugging Face's decoders inherit).
std::string lossy(std::string_view bytes);

// Unicode White_Space (the set Rust's char::is_whitespace uses).
bool is_whitespace(uint32_t cp);

}  // namespace dsv2::utf8

namespace dsv2::bytelevel {

// GPT-2's reversible byte <-> printable character table: printable Latin-1 bytes map to
// themselves, the other 68 bytes to U+0100.. in byte order.
const std::array<uint32_t, 256>& byte_to_char();
// Inverse: the byte a character stands for, or -1 for a character outside the table.
int char_to_byte(uint32_t cp);

// Decodes a byte-level string ("Ġhello") to the bytes it stands for. Returns false (and leaves
// `out` unspecified) if some character is not in the table.
bool decode(std::string_view token, std::string& out);
// Encodes raw bytes as a byte-level string.
std::string encode(std::string_view bytes);

}  // namespace dsv2::bytelevel
