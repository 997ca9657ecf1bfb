#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace helios::model {

// One tensor entry of a safetensors header, validated against the file.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;           // as spelled in the header: "F32", "BF16", "I8", ...
  std::vector<int64_t> shape;  // each >= 0
  uint64_t begin = 0;          // byte offsets into the data buffer (after the header)
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  // True for the dtypes helios can load (F32, F16, BF16).
  bool loadable() const;
  // The at:: dtype of a loadable entry; throws helios::Error(kDataLoss) naming the file and
  // tensor for any other.
  c10::ScalarType scalar_type(const std::filesystem::path& file) const;
};

// Largest safetensors header helios accepts: 100 MiB, the reference implementation's limit (a
// larger length is corruption, and the header is read whole before it is parsed).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{100} << 20;

// A safetensors file opened read-only. The header is read, parsed and fully validated on open
// (header length, JSON nesting, dtypes, shapes, element and byte counts without overflow,
// offsets within the file, overlaps); tensor bytes are read only when a tensor is loaded, so
// loading a subset reads only those bytes.
//
// Tensor bytes are read with pread() into the owned result, not copied out of a mapping: a file
// truncated or rewritten while it is open then gives a short read, reported as
// Error(kDataLoss) naming the file and tensor, where a mapping would kill the process with
// SIGBUS. The cost is nil for a load in the stored dtype (one copy from the page cache either
// way) and one bounce buffer of at most kReadChunkBytes for a converting load.
// Every error is a helios::Error naming the file and, where one is at fault, the tensor.
class SafetensorsFile {
 public:
  // Bytes read per pread() when a load converts dtypes: 64 MiB of stored elements at a time.
  static constexpr uint64_t kReadChunkBytes = uint64_t{64} << 20;

  // Throws kNotFound if the file cannot be opened, kDataLoss if it is malformed,
  // kInvalidArgument if its header nests deeper than kMaxJsonDepth.
  explicit SafetensorsFile(std::filesystem::path path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  uint64_t file_size() const { return size_; }
  // Offset of the data buffer in the file (8 + header length).
  uint64_t data_offset() const { return data_offset_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Tensor names in data-buffer order.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  // nullptr when absent.
  const SafetensorsEntry* find(const std::string& name) const;
  // Throws kNotFound naming the file and tensor when absent.
  const SafetensorsEntry& entry(const std::string& name) const;

  // Reads one tensor into an owned CPU tensor of `dtype` (conversion from
  // the stored F32/F16/BF16 included). Throws kNotFound for an absent tensor and kDataLoss for
  // a dtype helios cannot load or a file that no longer holds the tensor's bytes.
  at::Tensor load(const std::string& name, c10::ScalarType dtype) const;
  // The same, keeping the stored dtype.
  at::Tensor load(const std::string& name) const;

  // Bytes of tensor data copied out so far (instrumentation: proves what was read).
  uint64_t bytes_read() const { return bytes_read_.load(); }

 private:
  void close();
  void parse_header(std::string_view text);
  // Reads exactly `bytes` at file offset `offset` into `out`; a short read (the file
  // shrank since it was opened) throws kDataLoss naming `tensor`.
  void read_data(std::byte* out, uint64_t offset, uint64_t bytes, const std::string& tensor) const;

  std::filesystem::path path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;
  std::map<std::string, SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  mutable std::atomic<uint64_t> bytes_read_{0};  // load() is const and may run concurrently
};

// The header dtype name for F32/F16/BF16 ("F32", "F16", "BF16"); throws
// helios::Error(kInvalidArgument) for any other.
std::string safetensors_dtype_name(c10::ScalarType dtype);

// Writes `tensors` (any device/layout; converted to CPU, contiguous, `dtype`) in the given order
// with `metadata` in "__metadata__" ({"format": "pt"} as PyTorch writers do). The header is
// padded with spaces to a multiple of 8 bytes so the data buffer starts 8-byte aligned. The file
// is written to a temporary name and renamed, so readers never see a partial file.
// Throws kInvalidArgument for an unsupported dtype or a duplicate name, kUnavailable when the
// file cannot be written.
void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      c10::ScalarType dtype = c10::kFloat,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Bytes `save_safetensors` would write for this tensor's data in `dtype`.
int64_t safetensors_data_bytes(const at::Tensor& tensor, c10::ScalarType dtype);

}  // namespace helios::model
