#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace helios::kv {

// Free-list allocator of fixed-size KV blocks. Pure bookkeeping: no tensors, so the capacity
// policy can be tested on its own.
class KvBlockPool {
 public:
  explicit KvBlockPool(int64_t num_blocks);

  // Takes `count` blocks, appending their ids to `out`; takes none and returns false when fewer
  // than `count` are free.
  bool allocate(int64_t count, std::vector<int32_t>& out);
  void release(const std::vector<int32_t>& blocks);

  int64_t total_blocks() const { return total_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_blocks() const { return total_ - free_blocks(); }

 private:
  int64_t total_;
  std::vector<int32_t> free_;  // used as a stack: most recently freed block is reused first
};

// A sequence's view of the cache: which blocks hold its positions, and how many are filled.
struct SequenceKv {
  std::vector<int32_t> block_table;
  int64_t length = 0;  // positions [0, length) hold valid keys/values
};

struct KvCacheShape {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t block_size = 16;  // tokens per block
};

// Keys and values of one token in `num_layers` layers: the one definition of what the cache
// costs per token, for a pool that exists (KvCache) and one that is only planned.
int64_t kv_bytes_per_token(int64_t num_layers, int64_t kv_heads, int64_t head_dim,
                           int64_t element_size);
// Whole blocks of `block_bytes` in `budget_bytes`; 0 when either is not positive.
int64_t blocks_within(int64_t budget_bytes, int64_t block_bytes);

// Paged key/value storage for the loaded layers of one model. Layer l's keys live in one
// tensor [num_blocks * block_size, kv_heads, head_dim]; a token at position p of a sequence
// sits in slot block_table[p / block_size] * block_size + p % block_size.
class KvCache {
 public:
  KvCache(const KvCacheShape& shape, int64_t num_blocks, at::ScalarType dtype,
          const at::Device& device);

  // Bytes one token occupies across the shape's layers (keys and values), and how many blocks
  // fit in `budget_bytes`: kv_bytes_per_token / blocks_within for a cache shape. (A model's
  // whole memory plan, weights included, is engine/memory_plan.h.)
  static int64_t bytes_per_token(const KvCacheShape& shape, at::ScalarType dtype);
  static int64_t blocks_for_budget(const KvCacheShape& shape, at::ScalarType dtype,
                                   int64_t budget_bytes);

  // Makes room for positions [0, new_length): allocates the missing blocks, all or none.
  bool reserve(SequenceKv& sequence, int64_t new_length);
  void release(SequenceKv& sequence);

  // Slots of positions [begin, end) of `sequence` (all must be reserved), as int64 on device.
  at::Tensor slots(const SequenceKv& sequence, int64_t begin, int64_t end) const;
  void slots_into(const SequenceKv& sequence, int64_t begin, int64_t end,
                  std::vector<int64_t>& out) const;

  at::Tensor& keys(int64_t layer) { return keys_[layer]; }
  at::Tensor& values(int64_t layer) { return values_[layer]; }

  const KvCacheShape& shape() const { return shape_; }
  const KvBlockPool& pool() const { return pool_; }
  int64_t resident_bytes() const;
  const at::Device& device() const { return device_; }

 private:
  KvCacheShape shape_;
  KvBlockPool pool_;
  at::Device device_;
  std::vector<at::Tensor> keys_;
  std::vector<at::Tensor> values_;
};

}  // namespace helios::kv
