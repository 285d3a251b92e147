#include "io/npy.h"

#include <cstring>
#include <fstream>

#include "common/error.h"

namespace dsv2 {

void write_npy_f32(const std::filesystem::path& path, const float* data, const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? ", " : "");
    n *= shape[i];
  }
  if (shape.size() > 1) dict.resize(dict.size());
  dict += "), }";
  // Header (magic 6 + version 2 + length 2 + dict) padded with spaces to a multiple of 64, ending in \n.
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) fail("cannot write {}", path.string());
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t hl = uint16_t(dict.size());
  out.write(reinterpret_cast<const char*>(&hl), 2);
  out.write(dict.data(), std::streamsize(dict.size()));
  out.write(reinterpret_cast<const char*>(data), std::streamsize(n * 4));
  if (!out) fail("error writing {}", path.string());
}

NpyArray read_npy_f32(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path.string());
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) fail("{}: not a .npy file", path.string());
  uint32_t hl = 0;
  if (magic[6] == 1) {
    uint16_t h16;
    in.read(reinterpret_cast<char*>(&h16), 2);
    hl = h16;
  } else {
    in.read(reinterpret_cast<char*>(&hl), 4);
  }
  std::string header(hl, '\0');
  in.read(header.data(), hl);
  if (header.find("'<f4'") == std::string::npos) fail("{}: only little-endian float32 .npy is supported", path.string());
  if (header.find("'fortran_order': False") == std::string::npos) fail("{}: Fortran order is not supported", path.string());
  NpyArray a;
  size_t p = header.find('(');
  size_t q = header.find(')', p);
  if (p == std::string::npos || q == std::string::npos) fail("{}: malformed header", path.string());
  std::string dims = header.substr(p + 1, q - p - 1);
  int64_t n = 1;
  size_t i = 0;
  while (i < dims.size()) {
    while (i < dims.size() && (dims[i] == ' ' || dims[i] == ',')) ++i;
    if (i >= dims.size()) break;
    int64_t d = 0;
    while (i < dims.size() && dims[i] >= '0' && dims[i] <= '9') d = d * 10 + (dims[i++] - '0');
    a.shape.push_back(d);
    n *= d;
  }
  a.data.resize(size_t(n));
  in.read(reinterpret_cast<char*>(a.data.data()), std::streamsize(n * 4));
  if (!in) fail("{}: truncated data", path.string());
  return a;
}

}  // namespace dsv2
