#include "helios/model/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>

#include "helios/common/error.h"
#include "helios/common/json_limits.h"

namespace helios::model {
namespace {

using nlohmann::json;

// The format is little-endian and tensors are copied byte for byte.
static_assert(std::endian::native == std::endian::little, "helios assumes a little-endian host");

// Element sizes of every dtype the format defines, so files holding tensors helios does not
// load (int8 buffers, say) are still validated and the rest of them remain usable.
int64_t dtype_item_bytes(const std::string& dtype) {
  static const std::map<std::string, int64_t> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  const auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

[[noreturn]] void fail_tensor(const std::filesystem::path& file, const std::string& tensor,
                              const std::string& what) {
  throw Error(ErrorCode::kDataLoss, file.string() + ": tensor \"" + tensor + "\": " + what);
}

[[noreturn]] void fail_file(const std::filesystem::path& file, const std::string& what) {
  throw Error(ErrorCode::kDataLoss, file.string() + ": " + what);
}

bool is_non_negative_integer(const json& value) {
  return value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0);
}

SafetensorsEntry parse_entry(const std::filesystem::path& file, const std::string& name,
                             const json& value, uint64_t buffer_bytes) {
  if (!value.is_object()) fail_tensor(file, name, "header entry is not an object");
  SafetensorsEntry e;
  e.name = name;
  const auto dtype = value.find("dtype");
  if (dtype == value.end() || !dtype->is_string()) fail_tensor(file, name, "missing dtype");
  e.dtype = dtype->get<std::string>();
  const int64_t item_bytes = dtype_item_bytes(e.dtype);
  if (item_bytes == 0) fail_tensor(file, name, "unknown dtype \"" + e.dtype + "\"");

  const auto shape = value.find("shape");
  if (shape == value.end() || !shape->is_array()) fail_tensor(file, name, "missing shape");
  // numel is the element count; extent multiplies the dimensions with zeros counted as ones,
  // so a shape like [0, 2^62, 2^62] (no bytes, but strides no int64 can hold) is refused too.
  uint64_t numel = 1;
  uint64_t extent = 1;
  for (const json& dim : *shape) {
    if (dim.is_number_integer() && !dim.is_number_unsigned() && dim.get<int64_t>() < 0) {
      fail_tensor(file, name,
                  "negative dimension " + std::to_string(dim.get<int64_t>()) + " in shape " +
                      json_excerpt(*shape));
    }
    if (!is_non_negative_integer(dim) || dim.get<uint64_t>() > uint64_t{INT64_MAX}) {
      fail_tensor(file, name, "shape " + json_excerpt(*shape) + " is not a list of integers");
    }
    const uint64_t size = dim.get<uint64_t>();
    e.shape.push_back(static_cast<int64_t>(size));
    if (__builtin_mul_overflow(numel, size, &numel) ||
        __builtin_mul_overflow(extent, std::max<uint64_t>(size, 1), &extent) ||
        extent > uint64_t{INT64_MAX}) {
      fail_tensor(file, name, "shape " + json_excerpt(*shape) + " overflows");
    }
  }

  const auto offsets = value.find("data_offsets");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2 ||
      !is_non_negative_integer((*offsets)[0]) || !is_non_negative_integer((*offsets)[1])) {
    fail_tensor(file, name, "data_offsets must be two non-negative integers");
  }
  e.begin = (*offsets)[0].get<uint64_t>();
  e.end = (*offsets)[1].get<uint64_t>();
  const std::string span =
      "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
  if (e.end < e.begin) fail_tensor(file, name, span + " end before begin");
  if (e.end > buffer_bytes) {
    fail_tensor(file, name,
                span + " extend past the end of the data buffer (" + std::to_string(buffer_bytes) +
                    " bytes; truncated file?)");
  }
  uint64_t expected = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(item_bytes), &expected)) {
    fail_tensor(file, name, "shape " + shape_string(e.shape) + " of " + e.dtype + " overflows");
  }
  if (expected != e.nbytes()) {
    fail_tensor(file, name,
                span + " hold " + std::to_string(e.nbytes()) + " bytes but shape " +
                    shape_string(e.shape) + " of " + e.dtype + " needs " +
                    std::to_string(expected));
  }
  return e;
}

}  // namespace

bool SafetensorsEntry::loadable() const {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

c10::ScalarType SafetensorsEntry::scalar_type(const std::filesystem::path& file) const {
  if (dtype == "F32") return c10::kFloat;
  if (dtype == "F16") return c10::kHalf;
  if (dtype == "BF16") return c10::kBFloat16;
  fail_tensor(file, name, "unsupported dtype \"" + dtype + "\" (helios loads F32, F16, BF16)");
}

SafetensorsFile::SafetensorsFile(std::filesystem::path path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    throw Error(ErrorCode::kNotFound, path_.string() + ": cannot open: " + std::strerror(errno));
  }
  try {
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      throw Error(ErrorCode::kNotFound, path_.string() + ": not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ < 8) {
      fail_file(path_, "file is " + std::to_string(size_) +
                           " bytes, too short for the 8-byte header length (truncated file?)");
    }
    uint64_t header_bytes = 0;
    read_data(reinterpret_cast<std::byte*>(&header_bytes), 0, sizeof(header_bytes), "");
    if (header_bytes > size_ - 8) {
      fail_file(path_, "header length " + std::to_string(header_bytes) +
                           " extends past the end of the file (" + std::to_string(size_) +
                           " bytes)");
    }
    if (header_bytes > kMaxSafetensorsHeaderBytes) {
      fail_file(path_, "header length " + std::to_string(header_bytes) + " exceeds the limit of " +
                           std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
    }
    std::string header(header_bytes, '\0');
    read_data(reinterpret_cast<std::byte*>(header.data()), 8, header_bytes, "");
    data_offset_ = 8 + header_bytes;
    // No read-ahead across the file: loading a prefix of the layers must not pull the pages of
    // the others in. Each load reads its own tensor's bytes in bulk instead.
    ::posix_fadvise(fd_, 0, 0, POSIX_FADV_RANDOM);  // a hint: failure is harmless
    parse_header(header);
  } catch (...) {
    close();
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  close();
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      fd_(std::exchange(other.fd_, -1)),
      size_(std::exchange(other.size_, 0)),
      data_offset_(other.data_offset_),
      entries_(std::move(other.entries_)),
      metadata_(std::move(other.metadata_)),
      bytes_read_(other.bytes_read_.load()) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    close();
    path_ = std::move(other.path_);
    fd_ = std::exchange(other.fd_, -1);
    size_ = std::exchange(other.size_, 0);
    data_offset_ = other.data_offset_;
    entries_ = std::move(other.entries_);
    metadata_ = std::move(other.metadata_);
    bytes_read_ = other.bytes_read_.load();
  }
  return *this;
}

void SafetensorsFile::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void SafetensorsFile::read_data(std::byte* out, uint64_t offset, uint64_t bytes,
                                const std::string& tensor) const {
  uint64_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd_, out + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const std::string what =
          n < 0 ? std::string("cannot read: ") + std::strerror(errno)
                : "file ends at byte " + std::to_string(offset + done) + ", before byte " +
                      std::to_string(offset + bytes) +
                      " (truncated or rewritten since it was opened?)";
      if (tensor.empty()) fail_file(path_, what);
      fail_tensor(path_, tensor, what);
    }
    done += static_cast<uint64_t>(n);
  }
}

void SafetensorsFile::parse_header(std::string_view text) {
  const json header = parse_json(text, path_.string() + " header",
                                 {.syntax_error = ErrorCode::kDataLoss});
  if (!header.is_object()) fail_file(path_, "header is not a JSON object");

  const uint64_t buffer_bytes = size_ - data_offset_;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail_file(path_, "__metadata__ is not an object");
      for (const auto& [key, text_value] : value.items()) {
        if (!text_value.is_string()) {
          fail_file(path_, "__metadata__ value of \"" + key + "\" is not a string");
        }
        metadata_[key] = text_value.get<std::string>();
      }
      continue;
    }
    entries_.emplace(name, parse_entry(path_, name, value, buffer_bytes));
  }

  // Tensors sharing bytes would mean one of them is garbage; report the pair.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& [name, e] : entries_) {
    if (e.nbytes() > 0) by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      fail_tensor(path_, by_offset[i]->name,
                  "data_offsets overlap tensor \"" + by_offset[i - 1]->name + "\"");
    }
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<const SafetensorsEntry*> sorted;
  for (const auto& [name, e] : entries_) sorted.push_back(&e);
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const auto* a, const auto* b) { return a->begin < b->begin; });
  std::vector<std::string> out;
  for (const auto* e : sorted) out.push_back(e->name);
  return out;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = entries_.find(name);
  return it == entries_.end() ? nullptr : &it->second;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (e == nullptr) {
    throw Error(ErrorCode::kNotFound,
                path_.string() + ": tensor \"" + name + "\" not found in the file");
  }
  return *e;
}

at::Tensor SafetensorsFile::load(const std::string& name) const {
  return load(name, entry(name).scalar_type(path_));
}

at::Tensor SafetensorsFile::load(const std::string& name, c10::ScalarType dtype) const {
  const SafetensorsEntry& e = entry(name);
  const c10::ScalarType stored = e.scalar_type(path_);
  if (!c10::isFloatingType(dtype)) {
    throw Error(ErrorCode::kInvalidArgument, path_.string() + ": tensor \"" + name +
                                                 "\": cannot load as non-float dtype " +
                                                 std::string(c10::toString(dtype)));
  }
  const uint64_t offset = data_offset_ + e.begin;
  at::Tensor out = at::empty(e.shape, at::TensorOptions().dtype(dtype));
  if (stored == dtype) {
    read_data(static_cast<std::byte*>(out.data_ptr()), offset, e.nbytes(), name);
  } else {
    // Converted a chunk at a time through one bounce buffer, so a converting load never holds
    // a second copy of a large tensor.
    const uint64_t item = c10::elementSize(stored);
    const uint64_t chunk_items = kReadChunkBytes / item;
    const at::Tensor flat = out.view({-1});
    const uint64_t numel = e.nbytes() / item;
    at::Tensor bounce = at::empty({static_cast<int64_t>(std::min(numel, chunk_items))},
                                  at::TensorOptions().dtype(stored));
    for (uint64_t first = 0; first < numel; first += chunk_items) {
      const uint64_t count = std::min(chunk_items, numel - first);
      at::Tensor part = bounce.narrow(0, 0, static_cast<int64_t>(count));
      read_data(static_cast<std::byte*>(part.data_ptr()), offset + first * item, count * item,
                name);
      flat.narrow(0, static_cast<int64_t>(first), static_cast<int64_t>(count)).copy_(part);
    }
  }
  bytes_read_ += e.nbytes();
  return out;
}

std::string safetensors_dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat: return "F32";
    case c10::kHalf: return "F16";
    case c10::kBFloat16: return "BF16";
    default:
      throw Error(ErrorCode::kInvalidArgument, "safetensors: unsupported dtype " +
                                                   std::string(c10::toString(dtype)) +
                                                   " (helios writes F32, F16, BF16)");
  }
}

int64_t safetensors_data_bytes(const at::Tensor& tensor, c10::ScalarType dtype) {
  return tensor.numel() * static_cast<int64_t>(c10::elementSize(dtype));
}

void save_safetensors(const std::filesystem::path& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      c10::ScalarType dtype, const std::map<std::string, std::string>& metadata) {
  const std::string dtype_name = safetensors_dtype_name(dtype);
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__" || !seen.insert(name).second) {
      throw Error(ErrorCode::kInvalidArgument,
                  path.string() + ": tensor \"" + name + "\": duplicate or reserved name");
    }
    if (!tensor.defined()) {
      throw Error(ErrorCode::kInvalidArgument,
                  path.string() + ": tensor \"" + name + "\": undefined tensor");
    }
    const auto bytes = static_cast<uint64_t>(safetensors_data_bytes(tensor, dtype));
    header[name] = {{"dtype", dtype_name},
                    {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  std::filesystem::path temp = path;
  temp += ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    const uint64_t header_bytes = text.size();
    out.write(reinterpret_cast<const char*>(&header_bytes), sizeof(header_bytes));
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    // One tensor converted at a time, so saving needs no second copy of the whole model.
    for (const auto& [name, tensor] : tensors) {
      const at::Tensor cpu = tensor.detach().to(at::kCPU).to(dtype).contiguous();
      out.write(static_cast<const char*>(cpu.data_ptr()),
                static_cast<std::streamsize>(cpu.nbytes()));
    }
    out.close();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(temp, ignored);
      throw Error(ErrorCode::kUnavailable, path.string() + ": cannot write file");
    }
  }
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) {
    throw Error(ErrorCode::kUnavailable,
                path.string() + ": cannot rename into place: " + error.message());
  }
}

}  // namespace helios::model
