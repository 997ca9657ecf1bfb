#include "helios/kv/kv_cache.h"

#include <ATen/ATen.h>

#include "helios/common/error.h"

namespace helios::kv {

KvBlockPool::KvBlockPool(int64_t num_blocks) : total_(num_blocks) {
  if (num_blocks < 0) throw Error(ErrorCode::kInvalidArgument, "KV pool: negative block count");
  free_.reserve(num_blocks);
  // Highest id at the bottom so that allocation hands out 0, 1, 2, ... on a fresh pool.
  for (int64_t id = num_blocks - 1; id >= 0; --id) free_.push_back(static_cast<int32_t>(id));
}

bool KvBlockPool::allocate(int64_t count, std::vector<int32_t>& out) {
  if (count > free_blocks()) return false;
  for (int64_t i = 0; i < count; ++i) {
    out.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void KvBlockPool::release(const std::vector<int32_t>& blocks) {
  for (const int32_t block : blocks) free_.push_back(block);
}

KvCache::KvCache(const KvCacheShape& shape, int64_t num_blocks, at::ScalarType dtype,
                 const at::Device& device)
    : shape_(shape), pool_(num_blocks), device_(device) {
  if (shape.block_size <= 0) {
    throw Error(ErrorCode::kInvalidArgument, "KV cache: block_size must be positive");
  }
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  for (int64_t layer = 0; layer < shape.num_layers; ++layer) {
    keys_.push_back(
        at::zeros({num_blocks * shape.block_size, shape.num_kv_heads, shape.head_dim}, options));
    values_.push_back(at::zeros_like(keys_.back()));
  }
}

int64_t kv_bytes_per_token(int64_t num_layers, int64_t kv_heads, int64_t head_dim,
                           int64_t element_size) {
  return 2 * num_layers * kv_heads * head_dim * element_size;
}

int64_t blocks_within(int64_t budget_bytes, int64_t block_bytes) {
  return budget_bytes > 0 && block_bytes > 0 ? budget_bytes / block_bytes : 0;
}

int64_t KvCache::bytes_per_token(const KvCacheShape& shape, at::ScalarType dtype) {
  return kv_bytes_per_token(shape.num_layers, shape.num_kv_heads, shape.head_dim,
                            static_cast<int64_t>(c10::elementSize(dtype)));
}

int64_t KvCache::blocks_for_budget(const KvCacheShape& shape, at::ScalarType dtype,
                                   int64_t budget_bytes) {
  return blocks_within(budget_bytes, bytes_per_token(shape, dtype) * shape.block_size);
}

bool KvCache::reserve(SequenceKv& sequence, int64_t new_length) {
  const int64_t needed = (new_length + shape_.block_size - 1) / shape_.block_size;
  const int64_t missing = needed - static_cast<int64_t>(sequence.block_table.size());
  if (missing <= 0) return true;
  return pool_.allocate(missing, sequence.block_table);
}

void KvCache::release(SequenceKv& sequence) {
  pool_.release(sequence.block_table);
  sequence.block_table.clear();
  sequence.length = 0;
}

void KvCache::slots_into(const SequenceKv& sequence, int64_t begin, int64_t end,
                         std::vector<int64_t>& out) const {
  const int64_t reserved = static_cast<int64_t>(sequence.block_table.size()) * shape_.block_size;
  if (begin < 0 || end > reserved) {
    throw Error(ErrorCode::kInternal, "KV cache: position " + std::to_string(end) +
                                          " beyond the reserved " + std::to_string(reserved));
  }
  for (int64_t position = begin; position < end; ++position) {
    out.push_back(static_cast<int64_t>(sequence.block_table[position / shape_.block_size]) *
                      shape_.block_size +
                  position % shape_.block_size);
  }
}

at::Tensor KvCache::slots(const SequenceKv& sequence, int64_t begin, int64_t end) const {
  std::vector<int64_t> out;
  out.reserve(end - begin);
  slots_into(sequence, begin, end, out);
  return at::tensor(out, at::TensorOptions().dtype(at::kLong)).to(device_);
}

int64_t KvCache::resident_bytes() const {
  int64_t total = 0;
  for (size_t layer = 0; layer < keys_.size(); ++layer) {
    total += keys_[layer].nbytes() + values_[layer].nbytes();
  }
  return total;
}

}  // namespace helios::kv
