#pragma once
// NumPy .npy files (format 1.0, little-endian float32, C order): written by `dsv2 logits`,
// read by the golden tests.
#include <cstdint>
#include <filesystem>
#include <vector>

namespace dsv2 {

void write_npy_f32(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
NpyArray read_npy_f32(const std::filesystem::path& path);

}  // namespace dsv2
