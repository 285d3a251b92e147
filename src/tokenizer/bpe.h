#pragma once
// Byte-level BPE: a word's bytes start as one symbol each; the adjacent pair with the lowest merge
// rank (leftmost on ties) is merged until no pair has a merge, as Hugging Face's BPE model does.
// A min-heap over candidate pairs plus a linked list of symbols makes a word O(n log n); results
// per word are cached.
#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace dsv2 {

class BpeModel {
 public:
  // vocab: token bytes -> id (byte-level strings already decoded to the bytes they stand for).
  // merges: (left bytes, right bytes) in rank order. Throws dsv2::Error when a merge names a token
  // missing from vocab, or when a single byte has no token (byte-level vocabularies have all 256).
  BpeModel(std::unordered_map<std::string, int32_t> vocab,
           const std::vector<std::pair<std::string, std::string>>& merges, bool ignore_merges);
  ~BpeModel();

  // Appends the ids of one pre-tokenized word (raw bytes).
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;


 private:
  struct StrHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  // Open-addressing map (left id, right id) -> (rank, merged id): the inner loop's only lookup.
  struct MergeTable {
    std::vector<uint64_t> keys;
    std::vector<uint64_t> vals;
    uint64_t mask = 0;
    void build(const std::vector<std::pair<uint64_t, uint64_t>>& entries);
    bool find(int32_t a, int32_t b, int32_t& rank, int32_t& merged) const;
  };
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t, StrHash, std::equal_to<>> vocab_;
  std::array<int32_t, 256> byte_id_{};
  MergeTable merges_;
  bool ignore_merges_;

  static constexpr size_t kCacheMaxWordBytes = 128;
  static constexpr size_t kCacheMaxEntries = 1 << 17;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StrHash, std::equal_to<>> cache_;
};

}  // namespace dsv2
