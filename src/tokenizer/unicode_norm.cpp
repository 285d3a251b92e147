#include "tokenizer/unicode_norm.h"

#include <algorithm>
#include <vector>

#include "tokenizer/unicode.h"

namespace dsv2 {

namespace {

using namespace unorm_data;

constexpr uint32_t SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
constexpr uint32_t LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

uint8_t ccc(uint32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::lower_bound(kCcc, kCcc + kCccCount, cp, [](const CccEntry& e, uint32_t c) { return e.cp < c; });
  return (it != kCcc + kCccCount && it->cp == cp) ? it->ccc : 0;
}

void decompose(uint32_t cp, bool compat, std::vector<uint32_t>& out) {
  if (cp >= SBase && cp < SBase + SCount) {
    uint32_t s = cp - SBase;
    out.push_back(LBase + s / NCount);
    out.push_back(VBase + (s % NCount) / TCount);
    if (s % TCount) out.push_back(TBase + s % TCount);
    return;
  }
  const DecompEntry* table = compat ? kCompat : kCanon;
  size_t n = compat ? kCompatCount : kCanonCount;
  const uint32_t* pool = compat ? kCompatPoolPtr : kCanonPoolPtr;
  auto it = std::lower_bound(table, table + n, cp, [](const DecompEntry& e, uint32_t c) { return e.cp < c; });
  if (it != table + n && it->cp == cp) {
    out.insert(out.end(), pool + it->offset, pool + it->offset + it->length);
    return;
  }
  out.push_back(cp);
}

// The primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= LBase && a < LBase + LCount && b >= VBase && b < VBase + VCount)
    return SBase + ((a - LBase) * VCount + (b - VBase)) * TCount;
  if (a >= SBase && a < SBase + SCount && (a - SBase) % TCount == 0 && b > TBase && b < TBase + TCount)
    return a + (b - TBase);
  auto it = std::lower_bound(kComp, kComp + kCompCount, std::make_pair(a, b), [](const CompEntry& e, const auto& k) {
    return e.first != k.first ? e.first < k.first : e.second < k.second;
  });
  return (it != kComp + kCompCount && it->first == a && it->second == b) ? it->composite : 0;
}

}  // namespace

std::string normalize(std::string_view text, NormForm form) {
  const bool compat = form == NormForm::nfkc || form == NormForm::nfkd;
  const bool composed = form == NormForm::nfc || form == NormForm::nfkc;
  // Below these code points nothing changes: U+00A0 is the first compatibility mapping, U+00C0 the
  // first canonical decomposition, U+0300 the first character that composes with another.
  const uint32_t stable_below = compat ? 0xA0 : composed ? 0x300 : 0xC0;
  bool all_stable = true;
  for (size_t i = 0; i < text.size() && all_stable;) all_stable = utf8::next(text, i) < stable_below;
  if (all_stable) return std::string(text);

  std::vector<uint32_t> d;
  d.reserve(text.size());
  for (size_t i = 0; i < text.size();) decompose(utf8::next(text, i), compat, d);

  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (ccc(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && ccc(d[j]) != 0) ++j;
    if (j - i > 1) std::stable_sort(d.begin() + i, d.begin() + j, [](uint32_t a, uint32_t b) { return ccc(a) < ccc(b); });
    i = j;
  }

  if (!composed) {
    std::string s;
    s.reserve(text.size());
    for (uint32_t c : d) utf8::append(s, c);
    return s;
  }

  // Canonical composition: a character joins the last starter unless something between them is
  // a starter or has a combining class >= its own (it is "blocked").
  std::vector<uint32_t> out;
  out.reserve(d.size());
  long starter = -1;
  int last_cc = -1;  // class of the last character kept after the starter; -1: none yet
  for (uint32_t c : d) {
    int cc = ccc(c);
    if (starter >= 0 && (last_cc == -1 || (last_cc != 0 && last_cc < cc))) {
      if (uint32_t p = compose(out[starter], c)) {
        out[starter] = p;
        continue;
      }
    }
    if (cc == 0) {
      starter = static_cast<long>(out.size());
      last_cc = -1;
    } else {
      last_cc = cc;
    }
    out.push_back(c);
  }
  std::string s;
  s.reserve(text.size());
  for (uint32_t c : out) utf8::append(s, c);
  return s;
}

}  // namespace dsv2
