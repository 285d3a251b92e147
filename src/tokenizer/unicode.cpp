#include "tokenizer/unicode.h"

namespace dsv2::utf8 {

int sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

uint32_t next(std::string_view s, size_t& i) {
  auto b = static_cast<unsigned char>(s[i]);
  int n = sequence_length(b);
  if (n <= 1) {
    ++i;
    return b;
  }
  uint32_t cp = b & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

Scan scan(std::string_view s, size_t i, size_t& len) {
  auto b0 = static_cast<unsigned char>(s[i]);
  int n = sequence_length(b0);
  if (n == 1) {
    len = 1;
    return Scan::valid;
  }
  if (n == 0) {
    len = 1;
    return Scan::invalid;
  }
  // The second byte's allowed range excludes overlongs (E0, F0), surrogates (ED) and > U+10FFFF (F4).
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 == 0xE0) lo = 0xA0;
  if (b0 == 0xED) hi = 0x9F;
  if (b0 == 0xF0) lo = 0x90;
  if (b0 == 0xF4) hi = 0x8F;
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) {
      len = static_cast<size_t>(k);
      return Scan::incomplete;
    }
    auto b = static_cast<unsigned char>(s[i + k]);
    bool ok = k == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      len = static_cast<size_t>(k);
      return Scan::invalid;
    }
  }
  len = static_cast<size_t>(n);
  return Scan::valid;
}

size_t find_invalid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    if (scan(s, i, len) != Scan::valid) return i;
    i += len;
  }
  return std::string_view::npos;
}

std::string lossy(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    Scan r = scan(s, i, len);
    if (r == Scan::valid)
      out.append(s.data() + i, len);
    else
      out += "\xEF\xBF\xBD";
    i += len;
  }
  return out;
}

bool is_whitespace(uint32_t cp) {
  if (cp >= 0x09 && cp <= 0x0D) return true;
  switch (cp) {
    case 0x20: case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

}  // namespace dsv2::utf8

namespace dsv2::bytelevel {

namespace {
struct Tables {
  std::array<uint32_t, 256> to_char{};
  std::array<int16_t, 324> to_byte{};  // every mapped character is < 0x144
  Tables() {
    to_byte.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      to_char[b] = printable ? b : 0x100 + extra++;
      to_byte[to_char[b]] = static_cast<int16_t>(b);
    }
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}
}  // namespace

const std::array<uint32_t, 256>& byte_to_char() { return tables().to_char; }

int char_to_byte(uint32_t cp) { return cp < tables().to_byte.size() ? tables().to_byte[cp] : -1; }

bool decode(std::string_view token, std::string& out) {
  out.clear();
  size_t i = 0;
  while (i < token.size()) {
    auto b = static_cast<unsigned char>(token[i]);
    if (utf8::sequence_length(b) == 0) return false;
    size_t len;
    if (utf8::scan(token, i, len) != utf8::Scan::valid) return false;
    uint32_t cp = utf8::next(token, i);
    int byte = char_to_byte(cp);
    if (byte < 0) return false;
    out += static_cast<char>(byte);
  }
  return true;
}

std::string encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  const auto& t = byte_to_char();
  for (char c : bytes) utf8::append(out, t[static_cast<unsigned char>(c)]);
  return out;
}

}  // namespace dsv2::bytelevel
