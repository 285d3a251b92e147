#include "io/safetensors.h"

#include <cerrno>
#include <algorithm>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace dsv2 {

namespace fs = std::filesystem;
using json = nlohmann::json;

const char* dtype_name(DType t) {
  switch (t) {
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::f32: return "F32";
  }
  return "?";
}

size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

MappedFile::MappedFile(const fs::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open {}: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("cannot stat {}: {}", path.string(), std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{} is not a regular file", path.string());
  }
  size_ = size_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("cannot map {}: {}", path.string(), std::strerror(errno));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

namespace {

DType parse_dtype(const std::string& s, const std::string& tensor, const fs::path& file) {
  if (s == "BF16") return DType::bf16;
  if (s == "F16") return DType::f16;
  if (s == "F32") return DType::f32;
  fail("{}: tensor '{}' has dtype '{}', which is not supported (BF16, F16, F32 are)", file.string(), tensor, s);
}

}  // namespace

SafetensorsFile::SafetensorsFile(const fs::path& path) : file_(std::make_unique<MappedFile>(path)) {
  const std::string f = path.string();
  if (file_->size() < 8) fail("{}: truncated safetensors file ({} bytes, no header length)", f, file_->size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, file_->data(), 8);  // little-endian on every supported host
  if (header_len > file_->size() - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes): truncated or not safetensors", f,
         header_len, file_->size());
  const char* hp = reinterpret_cast<const char*>(file_->data() + 8);
  json header;
  try {
    header = json::parse(hp, hp + header_len);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", f, e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", f);
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_->size() - data_start;
  for (auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") || !info.contains("data_offsets"))
      fail("{}: tensor '{}' lacks dtype, shape or data_offsets", f, name);
    TensorView v;
    v.name = name;
    if (!info["dtype"].is_string()) fail("{}: tensor '{}' has a non-string dtype", f, name);
    v.dtype = parse_dtype(info["dtype"].get<std::string>(), name, path);
    const auto& shp = info["shape"];
    if (!shp.is_array()) fail("{}: tensor '{}' has a shape that is not an array", f, name);
    for (auto& d : shp) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) fail("{}: tensor '{}' has an invalid shape entry", f, name);
      v.shape.push_back(d.get<int64_t>());
    }
    const auto& off = info["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail("{}: tensor '{}' has invalid data_offsets", f, name);
    uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size)
      fail("{}: tensor '{}' data_offsets [{}, {}) lie outside the data section of {} bytes (truncated file?)", f,
           name, b, e, data_size);
    uint64_t expect = 1;
    for (auto d : v.shape) {
      if (d != 0 && expect > (uint64_t(1) << 48) / uint64_t(d)) fail("{}: tensor '{}' shape is too large", f, name);
      expect *= uint64_t(d);
    }
    expect *= dtype_size(v.dtype);
    if (e - b != expect)
      fail("{}: tensor '{}' {} {} needs {} bytes but data_offsets span {}", f, name, dtype_name(v.dtype),
           shape_str(v.shape), expect, e - b);
    v.data = file_->data() + data_start + b;
    tensors_.emplace(name, std::move(v));
  }
}

Checkpoint::Checkpoint(const fs::path& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) fail("model folder {} does not exist or is not a folder", dir.string());
  fs::path index = dir / "model.safetensors.index.json";
  std::vector<std::string> shard_names;
  std::map<std::string, std::string> weight_map;
  if (fs::exists(index)) {
    std::ifstream in(index);
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", index.string(), e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      fail("{}: no \"weight_map\" object", index.string());
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail("{}: weight_map entry '{}' is not a file name", index.string(), name);
      std::string fn = file.get<std::string>();
      if (fn.find('/') != std::string::npos || fn == ".." || fn.empty())
        fail("{}: weight_map entry '{}' names '{}', which is not a file in the folder", index.string(), name, fn);
      weight_map[name] = fn;
      if (std::find(shard_names.begin(), shard_names.end(), fn) == shard_names.end()) shard_names.push_back(fn);
    }
  } else if (fs::exists(dir / "model.safetensors")) {
    shard_names.push_back("model.safetensors");
  } else {
    fail("{}: no model.safetensors and no model.safetensors.index.json", dir.string());
  }
  for (auto& fn : shard_names) {
    fs::path p = dir / fn;
    if (!fs::exists(p)) fail("{}: shard {} is listed in the index but missing", dir.string(), fn);
    files_.push_back(std::make_unique<SafetensorsFile>(p));
    total_bytes_ += files_.back()->file_size();
  }
  for (size_t i = 0; i < files_.size(); ++i) {
    for (auto& [name, view] : files_[i]->tensors()) {
      if (!weight_map.empty()) {
        auto it = weight_map.find(name);
        if (it == weight_map.end() || it->second != shard_names[i]) continue;  // index is authoritative
      }
      if (index_.count(name)) fail("{}: tensor '{}' appears in more than one file", dir.string(), name);
      index_[name] = {i, &view};
    }
  }
  for (auto& [name, fn] : weight_map)
    if (!index_.count(name)) fail("{}: the index maps tensor '{}' to {}, which does not contain it", dir.string(), name, fn);
}

const TensorView& Checkpoint::get_any(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("{}: tensor '{}' is missing from the checkpoint", dir_.string(), name);
  return *it->second.second;
}

const TensorView& Checkpoint::get(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorView& v = get_any(name);
  if (v.shape != shape)
    fail("{}: tensor '{}' has shape {} but the config implies {}", file_of(name).string(), name, shape_str(v.shape),
         shape_str(shape));
  return v;
}

const fs::path& Checkpoint::file_of(const std::string& name) const {
  auto it = index_.find(name);
  DSV2_CHECK(it != index_.end());
  return files_[it->second.first]->path();
}

}  // namespace dsv2
