#include "tokenizer/bpe.h"

#include <algorithm>

#include "common/error.h"
#include "tokenizer/unicode.h"

namespace dsv2 {

namespace {
inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}
inline uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdULL;
  k ^= k >> 33;
  return k;
}
constexpr uint64_t kEmpty = ~0ULL;

std::string printable(std::string_view bytes) { return bytelevel::encode(bytes); }
}  // namespace

void BpeModel::MergeTable::build(const std::vector<std::pair<uint64_t, uint64_t>>& entries) {
  size_t cap = 16;
  while (cap < entries.size() * 2) cap <<= 1;
  keys.assign(cap, kEmpty);
  vals.assign(cap, 0);
  mask = cap - 1;
  for (const auto& [k, v] : entries) {
    size_t h = mix(k) & mask;
    while (keys[h] != kEmpty && keys[h] != k) h = (h + 1) & mask;
    // A repeated merge takes its last rank, as the reference implementation's map insertion does.
    keys[h] = k;
    vals[h] = v;
  }
}

bool BpeModel::MergeTable::find(int32_t a, int32_t b, int32_t& rank, int32_t& merged) const {
  uint64_t k = pair_key(a, b);
  size_t h = mix(k) & mask;
  while (true) {
    uint64_t kk = keys[h];
    if (kk == k) {
      rank = static_cast<int32_t>(vals[h] >> 32);
      merged = static_cast<int32_t>(vals[h] & 0xffffffffu);
      return true;
    }
    if (kk == kEmpty) return false;
    h = (h + 1) & mask;
  }
}

BpeModel::BpeModel(std::unordered_map<std::string, int32_t> vocab,
                   const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges)
    : vocab_(vocab.begin(), vocab.end()), ignore_merges_(ignore_merges) {
  for (int b = 0; b < 256; ++b) {
    auto it = vocab_.find(std::string(1, static_cast<char>(b)));
    // Bytes that never occur in UTF-8 (C0, C1, F5-FF) may be missing: input text is validated
    // UTF-8, so they never reach the model (DeepSeek keeps some of them as added tokens instead).
    bool never_in_utf8 = b == 0xC0 || b == 0xC1 || b >= 0xF5;
    if (it == vocab_.end() && !never_in_utf8)
      fail("tokenizer.json: the BPE vocabulary has no token for byte 0x{:02X} (\"{}\"); byte-level BPE needs "
           "every byte that UTF-8 text can contain",
           b, printable(std::string(1, static_cast<char>(b))));
    byte_id_[b] = it == vocab_.end() ? -1 : it->second;
  }
  std::vector<std::pair<uint64_t, uint64_t>> entries;
  entries.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [l, r] = merges[rank];
    auto il = vocab_.find(l), ir = vocab_.find(r), im = vocab_.find(l + r);
    if (il == vocab_.end() || ir == vocab_.end() || im == vocab_.end())
      fail("tokenizer.json: merge {} (\"{} {}\") uses a token missing from the vocabulary", rank, printable(l),
           printable(r));
    entries.push_back({pair_key(il->second, ir->second),
                       (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(im->second)});
  }
  merges_.build(entries);
}

BpeModel::~BpeModel() = default;

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  struct Sym {
    int32_t id, prev, next;
    bool alive;
  };
  struct Cand {
    int32_t rank, pos;
    int32_t merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  const int n = static_cast<int>(word.size());
  std::vector<Sym> sym(n);
  for (int i = 0; i < n; ++i) sym[i] = {byte_id_[static_cast<unsigned char>(word[i])], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::vector<Cand> heap;
  heap.reserve(n);
  auto consider = [&](int pos) {
    int nx = sym[pos].next;
    if (nx < 0) return;
    int32_t rank, merged;
    if (merges_.find(sym[pos].id, sym[nx].id, rank, merged)) {
      heap.push_back({rank, pos, merged});
      std::push_heap(heap.begin(), heap.end(), std::greater<>{});
    }
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<>{});
    Cand c = heap.back();
    heap.pop_back();
    Sym& s = sym[c.pos];
    if (!s.alive || s.next < 0) continue;
    // Stale candidate: one side has merged since it was pushed (ranks identify merges uniquely).
    int32_t rank, merged;
    if (!merges_.find(s.id, sym[s.next].id, rank, merged) || rank != c.rank) continue;
    Sym& r = sym[s.next];
    s.id = merged;
    r.alive = false;
    s.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.pos;
    if (s.prev >= 0) consider(s.prev);
    consider(c.pos);
  }
  for (int i = 0; i >= 0 && i < n; i = sym[i].next) out.push_back(sym[i].id);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (word.size() == 1) {
    out.push_back(byte_id_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (ignore_merges_) {
    // Llama-3-style vocabularies: a word that is itself a token is emitted whole.
    auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    auto it = cache_.find(word);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t start = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + start, out.end()));
  }
}

}  // namespace dsv2
