#pragma once
// Unicode normalization forms (UAX #15): full decomposition (canonical, or compatibility for the
// K forms; Hangul by algorithm), canonical ordering, and for NFC/NFKC canonical composition minus
// the exclusions. Tables are generated from Unicode 14.0 data (tools/tokenizer/gen_unicode_norm.py);
// normalization data of assigned characters never changes between Unicode versions, so the result
// is exact for every character assigned in Unicode 14.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv2 {

enum class NormForm { nfc, nfkc, nfd, nfkd };

// `text` must be valid UTF-8.
std::string normalize(std::string_view text, NormForm form);

namespace unorm_data {
struct CccEntry {
  uint32_t cp;
  uint8_t ccc;
};
struct DecompEntry {
  uint32_t cp;
  uint32_t offset;
  uint32_t length;
};
struct CompEntry {
  uint32_t first, second, composite;
};
extern const CccEntry kCcc[];
extern const size_t kCccCount;
extern const DecompEntry kCanon[];
extern const size_t kCanonCount;
extern const uint32_t* const kCanonPoolPtr;
extern const DecompEntry kCompat[];
extern const size_t kCompatCount;
extern const uint32_t* const kCompatPoolPtr;
extern const CompEntry kComp[];
extern const size_t kCompCount;
}  // namespace unorm_data

}  // namespace dsv2
