#include "helios/kv/kv_cache.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace helios::kv {
namespace {

TEST(KvBlockPool, AllocatesAllOrNothingAndReusesFreedBlocks) {
  KvBlockPool pool(4);
  std::vector<int32_t> a, b;
  ASSERT_TRUE(pool.allocate(3, a));
  EXPECT_EQ(a, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_FALSE(pool.allocate(2, b));
  EXPECT_TRUE(b.empty()) << "a failed allocation takes nothing";
  EXPECT_EQ(pool.free_blocks(), 1);
  pool.release(a);
  EXPECT_EQ(pool.free_blocks(), 4);
  ASSERT_TRUE(pool.allocate(4, b));
  EXPECT_EQ(pool.used_blocks(), 4);
}

TEST(KvCache, BytesPerTokenFollowTheLoadedDepth) {
  const KvCacheShape full{8, 2, 32, 16};
  KvCacheShape truncated = full;
  truncated.num_layers = 2;
  EXPECT_EQ(KvCache::bytes_per_token(full, at::kFloat), 2 * 8 * 2 * 32 * 4);
  EXPECT_EQ(KvCache::bytes_per_token(truncated, at::kFloat) * 4,
            KvCache::bytes_per_token(full, at::kFloat));
  const int64_t budget = 1 << 20;
  EXPECT_EQ(KvCache::blocks_for_budget(truncated, at::kFloat, budget),
            4 * KvCache::blocks_for_budget(full, at::kFloat, budget));
}

TEST(KvCache, ReserveMapsPositionsToSlotsThroughTheBlockTable) {
  KvCache cache(KvCacheShape{2, 1, 4, 4}, 6, at::kFloat, at::kCPU);
  SequenceKv first, second;
  ASSERT_TRUE(cache.reserve(first, 5));   // blocks 0, 1
  ASSERT_TRUE(cache.reserve(second, 3));  // block 2
  ASSERT_TRUE(cache.reserve(first, 9));   // block 3
  EXPECT_EQ(first.block_table, (std::vector<int32_t>{0, 1, 3}));
  const at::Tensor slots = cache.slots(first, 3, 9);
  EXPECT_TRUE(at::equal(slots, at::tensor({3, 4, 5, 6, 7, 12}, at::kLong)));
  EXPECT_FALSE(cache.reserve(second, 4 * 4 + 1)) << "needs 4 more blocks, 2 are free";
  EXPECT_EQ(second.block_table.size(), 1u);
  cache.release(first);
  EXPECT_EQ(cache.pool().free_blocks(), 5);
  EXPECT_EQ(first.length, 0);
  EXPECT_EQ(cache.resident_bytes(), 2 * 2 * 6 * 4 * 1 * 4 * 4);
  EXPECT_THROW(cache.slots(second, 0, 5), std::exception) << "position past the reservation";
}

}  // namespace
}  // namespace helios::kv
