#pragma once
// Safetensors checkpoints as Hugging Face publishes them: one model.safetensors, or shards listed
// in model.safetensors.index.json. Files are memory-mapped; a tensor is bound by name with its
// dtype and shape checked, and every header field is validated against the file size first, so
// a truncated or corrupt file is an Error naming the file and tensor, never a crash.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dsv2 {

enum class DType { bf16, f16, f32 };
const char* dtype_name(DType t);
size_t dtype_size(DType t);

// A view of tensor data (mapped or owned elsewhere). Row-major, shape as stored.
struct TensorView {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype); }
};

std::string shape_str(const std::vector<int64_t>& shape);

class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::filesystem::path& path() const { return file_->path(); }
  size_t file_size() const { return file_->size(); }

 private:
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, TensorView> tensors_;
};

// All tensors of a model folder, whichever of the two layouts it uses.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& dir);
  bool has(const std::string& name) const { return index_.count(name) != 0; }
  // The tensor, checked to have exactly `shape`; Error names the tensor, file, expected and actual.
  const TensorView& get(const std::string& name, const std::vector<int64_t>& shape) const;
  const TensorView& get_any(const std::string& name) const;
  const std::filesystem::path& file_of(const std::string& name) const;
  size_t total_bytes() const { return total_bytes_; }
  size_t num_tensors() const { return index_.size(); }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::pair<size_t, const TensorView*>> index_;  // name -> (file, view)
  size_t total_bytes_ = 0;
};

}  // namespace dsv2
