#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common.cuh"
#include "paged_attention.cuh"

// Flash-decoding over the paged KV cache.
//
// Main kernel, grid (kv_heads * head_chunks, batch, partitions): one CTA takes one sequence b,
// one kv head and up to kMaxHeadsPerCta of the query heads sharing it (all of them unless the
// group is larger than that), over the context tokens [p * kPartitionTokens,
// min((p + 1) * kPartitionTokens, context_len)), so every K/V row of the partition is read once
// per CTA. K and V are read in chunks of kC = 4 elements (16 bytes of float, 8 bytes of a 16-bit
// type) when head_dim and the caches' alignment allow it, otherwise in pairs. Phases, separated
// by __syncthreads:
//   1. the partition's slots (from the block table) and the heads' q vectors (float, times
//      scale) into shared memory;
//   2. scores: each warp takes tokens round-robin, `lanes_per_token` lanes per token striding
//      over its chunks; the lanes' partial dot products are summed with xor shuffles inside
//      the lane group;
//   3. softmax statistics, one warp per head: max m and sum S of exp(score - m) over the
//      partition; the scores are replaced by exp(score - m);
//   4. values: thread (s, j) accumulates chunk j of V over the tokens t = s (mod subsets) for
//      all the CTA's heads, and the subsets are summed through shared memory;
//   5. with a single partition, out = acc / S; otherwise acc (unnormalized), m and S go to the
//      workspace and the reduce kernel, grid (q_heads, batch), merges the partitions:
//        M = max_p m_p,  out = sum_p acc_p e^(m_p - M) / sum_p S_p e^(m_p - M).
// CTAs whose partition starts at or after the sequence's context_len write nothing; the reduce
// kernel reads only the partitions below ceil(context_len / kPartitionTokens).
//
// Workspace (float32), with P = ceil(max_context / kPartitionTokens) and
// w = (b * q_heads + h) * P + p:
//   acc [batch * q_heads * P * head_dim]  at w * head_dim + d
//   max [batch * q_heads * P]             at w
//   sum [batch * q_heads * P]             at w

namespace helios::kernels {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxHeadsPerCta = 8;
// Softmax statistics are computed one warp per head, all heads at once.
static_assert(kMaxHeadsPerCta <= kWarps, "one warp per head in the softmax phase");
static_assert(kMaxHeadDim / 2 <= kThreads, "the value phase needs a thread per chunk");

// How K/V rows are read: kC elements at a time, vector loads or (caches not aligned to two
// elements) scalar ones.
enum LoadMode : int { kQuad = 0, kPair = 1, kPairScalar = 2 };

template <int kMode>
inline constexpr int kChunk = kMode == kQuad ? 4 : 2;

template <typename T, int kMode>
__device__ __forceinline__ void load_chunk(const T* p, float (&f)[kChunk<kMode>]) {
  if constexpr (kMode == kQuad) {
    load4_ro<T>(p, f);
  } else {
    const float2 v = load_pair_ro<T, kMode == kPair>(p);
    f[0] = v.x;
    f[1] = v.y;
  }
}

template <typename T>
struct Params {
  T* out;
  const T* q;
  int64_t q_stride;
  const T* key_cache;
  const T* value_cache;
  const int* block_tables;
  const int* context_lens;
  float* ws_acc;
  float* ws_max;
  float* ws_sum;
  int max_blocks;
  int batch;
  int q_heads;
  int kv_heads;
  int head_dim;
  int block_size;
  float scale;
  int num_partitions;
  int heads_per_cta;    // query heads per CTA (the last chunk of a group may have fewer)
  int head_chunks;      // CTAs per kv head along grid.x
  int lanes_per_token;  // power of two in [4, 32]
  // Launches cover at most 65535 sequences (grid.y) and partitions (grid.z) each; the host
  // issues several for more.
  int batch_offset;
  int partition_offset;
};

// Shared memory, in this order (every region starts 16-byte aligned):
//   int64 slots[kPartitionTokens]
//   float head_max[kMaxHeadsPerCta], head_sum[kMaxHeadsPerCta]
//   float scores[kPartitionTokens][kHeads]          (probabilities after phase 3)
//   float qred[subsets * kHeads * head_dim]         (q[kHeads][head_dim] in phases 1-2, the
//                                                   value partials [subsets][kHeads][head_dim]
//                                                   in phases 4-5; subsets >= 1)
constexpr std::size_t kSlotsBytes = kPartitionTokens * sizeof(int64_t);
constexpr std::size_t kStatsBytes = 2 * kMaxHeadsPerCta * sizeof(float);
static_assert(kSlotsBytes % 16 == 0 && kStatsBytes % 16 == 0, "16-byte aligned regions");

inline int value_subsets(int head_dim, int chunk) {
  return kThreads / (head_dim / chunk);
}

inline std::size_t smem_bytes(int heads, int head_dim, int chunk) {
  return kSlotsBytes + kStatsBytes +
         sizeof(float) *
             (static_cast<std::size_t>(kPartitionTokens) * heads +
              static_cast<std::size_t>(value_subsets(head_dim, chunk)) * heads * head_dim);
}
// subsets * head_dim <= kThreads * chunk, so at most 2112 + 4 * (256 * 8 + 1024 * 8) bytes =
// 42 KB: under the 48 KB default, no cudaFuncAttributeMaxDynamicSharedMemorySize opt-in needed.
static_assert(kSlotsBytes + kStatsBytes +
                      sizeof(float) *
                          (kPartitionTokens * kMaxHeadsPerCta + kThreads * 4 * kMaxHeadsPerCta) <=
                  48 * 1024,
              "shared memory above the default limit");

template <typename T, int kHeads, int kMode>
__global__ void __launch_bounds__(kThreads, 3) paged_attention_kernel(const Params<T> p) {
  constexpr int kC = kChunk<kMode>;
  using ChunkF = std::conditional_t<kC == 4, float4, float2>;
  extern __shared__ float4 smem_raw[];
  char* smem = reinterpret_cast<char*>(smem_raw);
  int64_t* slots = reinterpret_cast<int64_t*>(smem);
  float* head_max = reinterpret_cast<float*>(smem + kSlotsBytes);
  float* head_sum = head_max + kMaxHeadsPerCta;
  float* scores = head_sum + kMaxHeadsPerCta;
  float* qred = scores + kPartitionTokens * kHeads;

  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int hd = p.head_dim;
  const int nchunks = hd / kC;

  const int kvh = static_cast<int>(blockIdx.x) / p.head_chunks;
  const int hchunk = static_cast<int>(blockIdx.x) - kvh * p.head_chunks;
  const int group = p.q_heads / p.kv_heads;
  const int h_begin = kvh * group + hchunk * p.heads_per_cta;  // first query head of the CTA
  const int nh = min(p.heads_per_cta, group - hchunk * p.heads_per_cta);  // >= 1

  // Score phase: lane group `sub` of G lanes takes one token, lane gl of it the chunks
  // gl, gl + G, ...
  const int lanes_per_token = p.lanes_per_token;
  const int tokens_per_warp = kWarpSize / lanes_per_token;
  const int sub = lane / lanes_per_token;
  const int gl = lane - sub * lanes_per_token;
  // Value phase: thread (vs, vj) takes chunk vj of the tokens vs, vs + subsets, ...
  const int subsets = kThreads / nchunks;
  const int vs = tid / nchunks;
  const int vj = tid - vs * nchunks;

  const int64_t slot_stride = static_cast<int64_t>(p.kv_heads) * hd;
  const T* k_head = p.key_cache + static_cast<int64_t>(kvh) * hd;
  const T* v_head = p.value_cache + static_cast<int64_t>(kvh) * hd;

  const int b = p.batch_offset + static_cast<int>(blockIdx.y);
  const int ctx = __ldg(p.context_lens + b);
  const int* table = p.block_tables + static_cast<int64_t>(b) * p.max_blocks;
  T* out_b = p.out + (static_cast<int64_t>(b) * p.q_heads + h_begin) * hd;

  const int part = p.partition_offset + static_cast<int>(blockIdx.z);
  const int start = part * kPartitionTokens;
  if (start >= ctx) {
    // Nothing to attend to. With a single partition this is only reachable for
    // context_len <= 0, outside the contract: write zeros rather than leave the output
    // undefined. With several, the reduce kernel never reads this partition.
    if (p.num_partitions == 1) {
      for (int e = tid; e < nh * hd; e += kThreads) out_b[e] = from_float<T>(0.0f);
    }
    return;  // uniform across the CTA, before any barrier
  }
  const int n = min(kPartitionTokens, ctx - start);

  // ---- 1. slots and q ---------------------------------------------------------------
  for (int t = tid; t < n; t += kThreads) {
    const int tok = start + t;
    const int block = __ldg(table + tok / p.block_size);
    slots[t] = static_cast<int64_t>(block) * p.block_size + tok % p.block_size;
  }
  {
    const T* q_b = p.q + static_cast<int64_t>(b) * p.q_stride + static_cast<int64_t>(h_begin) * hd;
    for (int e = tid; e < kHeads * hd; e += kThreads) {
      qred[e] = e < nh * hd ? to_float(q_b[e]) * p.scale : 0.0f;  // padded heads: 0
    }
  }
  __syncthreads();

  // ---- 2. scores --------------------------------------------------------------------
  for (int base = warp * tokens_per_warp; base < n; base += kWarps * tokens_per_warp) {
    const int t = base + sub;
    float acc[kHeads];
#pragma unroll
    for (int h = 0; h < kHeads; ++h) acc[h] = 0.0f;
    if (t < n) {
      const T* k_row = k_head + slots[t] * slot_stride;
#pragma unroll 4
      for (int j = gl; j < nchunks; j += lanes_per_token) {
        float kv[kC];
        load_chunk<T, kMode>(k_row + j * kC, kv);
#pragma unroll
        for (int h = 0; h < kHeads; ++h) {
          const ChunkF qq = *reinterpret_cast<const ChunkF*>(qred + h * hd + j * kC);
          acc[h] = fmaf(qq.x, kv[0], acc[h]);
          acc[h] = fmaf(qq.y, kv[1], acc[h]);
          if constexpr (kC == 4) {
            acc[h] = fmaf(qq.z, kv[2], acc[h]);
            acc[h] = fmaf(qq.w, kv[3], acc[h]);
          }
        }
      }
    }
    // Every lane of the warp gets here (the loop bound is uniform per warp); the xor
    // partners stay inside the aligned group of lanes_per_token lanes.
    for (int offset = lanes_per_token / 2; offset > 0; offset /= 2) {
#pragma unroll
      for (int h = 0; h < kHeads; ++h) acc[h] += __shfl_xor_sync(kFullMask, acc[h], offset);
    }
    if (t < n && gl == 0) {
#pragma unroll
      for (int h = 0; h < kHeads; ++h) scores[t * kHeads + h] = acc[h];
    }
  }
  __syncthreads();

  // ---- 3. softmax statistics, one warp per head ----------------------------------------
  for (int h = warp; h < nh; h += kWarps) {
    float m = -INFINITY;
    for (int t = lane; t < n; t += kWarpSize) m = fmaxf(m, scores[t * kHeads + h]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int t = lane; t < n; t += kWarpSize) {
      const float e = expf(scores[t * kHeads + h] - m);
      scores[t * kHeads + h] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      head_max[h] = m;
      head_sum[h] = sum;
    }
  }
  __syncthreads();

  // ---- 4. values ---------------------------------------------------------------------
  // The partials overwrite the q region, which nobody reads after phase 2.
  if (vs < subsets) {
    float acc[kHeads][kC];
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
#pragma unroll
      for (int c = 0; c < kC; ++c) acc[h][c] = 0.0f;
    }
    const T* v_col = v_head + vj * kC;
#pragma unroll 2
    for (int t = vs; t < n; t += subsets) {
      float vv[kC];
      load_chunk<T, kMode>(v_col + slots[t] * slot_stride, vv);
      const float* pt = scores + t * kHeads;
      float pr[kHeads];
      if constexpr (kHeads == 1) {
        pr[0] = pt[0];
      } else if constexpr (kHeads == 2) {
        const float2 p2 = *reinterpret_cast<const float2*>(pt);
        pr[0] = p2.x;
        pr[1] = p2.y;
      } else {
#pragma unroll
        for (int c = 0; c < kHeads / 4; ++c) {
          const float4 p4 = reinterpret_cast<const float4*>(pt)[c];
          pr[4 * c] = p4.x;
          pr[4 * c + 1] = p4.y;
          pr[4 * c + 2] = p4.z;
          pr[4 * c + 3] = p4.w;
        }
      }
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
#pragma unroll
        for (int c = 0; c < kC; ++c) acc[h][c] = fmaf(pr[h], vv[c], acc[h][c]);
      }
    }
    float* red = qred + vs * kHeads * hd + vj * kC;
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      if constexpr (kC == 4) {
        *reinterpret_cast<float4*>(red + h * hd) =
            make_float4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
      } else {
        *reinterpret_cast<float2*>(red + h * hd) = make_float2(acc[h][0], acc[h][1]);
      }
    }
  }
  __syncthreads();

  // ---- 5. output -----------------------------------------------------------------------
  for (int e = tid; e < nh * hd; e += kThreads) {
    const int h = e / hd;
    float a = 0.0f;
    for (int s = 0; s < subsets; ++s) a += qred[s * kHeads * hd + e];
    if (p.num_partitions == 1) {
      out_b[e] = from_float<T>(a / head_sum[h]);
    } else {
      const int d = e - h * hd;
      const int64_t w =
          (static_cast<int64_t>(b) * p.q_heads + h_begin + h) * p.num_partitions + part;
      p.ws_acc[w * hd + d] = a;
      if (d == 0) {
        p.ws_max[w] = head_max[h];
        p.ws_sum[w] = head_sum[h];
      }
    }
  }
}

// grid (q_heads, batch), one thread per dimension: merges the partitions of one (b, h).
template <typename T>
__global__ void __launch_bounds__(kMaxHeadDim)
    paged_attention_reduce_kernel(T* __restrict__ out, const float* __restrict__ ws_acc,
                                  const float* __restrict__ ws_max,
                                  const float* __restrict__ ws_sum,
                                  const int* __restrict__ context_lens, int batch, int q_heads,
                                  int head_dim, int num_partitions) {
  const int h = blockIdx.x;
  const int d = threadIdx.x;
  if (d >= head_dim) return;  // no barriers below
  for (int b = blockIdx.y; b < batch; b += gridDim.y) {
    const int ctx = __ldg(context_lens + b);
    const int valid = ctx <= 0 ? 0 : min((ctx - 1) / kPartitionTokens + 1, num_partitions);
    const int64_t w0 = (static_cast<int64_t>(b) * q_heads + h) * num_partitions;
    float m = -INFINITY;
    for (int part = 0; part < valid; ++part) m = fmaxf(m, __ldg(ws_max + w0 + part));
    float total = 0.0f;
    float acc = 0.0f;
    for (int part = 0; part < valid; ++part) {
      const float weight = expf(__ldg(ws_max + w0 + part) - m);
      total = fmaf(__ldg(ws_sum + w0 + part), weight, total);
      acc = fmaf(__ldg(ws_acc + (w0 + part) * head_dim + d), weight, acc);
    }
    out[(static_cast<int64_t>(b) * q_heads + h) * head_dim + d] =
        from_float<T>(valid > 0 ? acc / total : 0.0f);
  }
}

int pow2_ceil(int v) {
  int r = 1;
  while (r < v) r *= 2;
  return r;
}

// Launches the main kernel over every (sequence, partition), in pieces of at most
// kMaxGridYZ along grid.y and grid.z (a single launch for any realistic size).
template <typename T, int kHeads, int kMode>
cudaError_t launch_main(Params<T> params, unsigned grid_x, cudaStream_t stream) {
  const std::size_t smem = smem_bytes(kHeads, params.head_dim, kChunk<kMode>);
  for (int b0 = 0; b0 < params.batch; b0 += kMaxGridYZ) {
    for (int p0 = 0; p0 < params.num_partitions; p0 += kMaxGridYZ) {
      params.batch_offset = b0;
      params.partition_offset = p0;
      const dim3 grid(grid_x, grid_yz(params.batch - b0), grid_yz(params.num_partitions - p0));
      paged_attention_kernel<T, kHeads, kMode><<<grid, kThreads, smem, stream>>>(params);
      const cudaError_t err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

template <typename T, int kMode>
cudaError_t launch_main(const Params<T>& params, int heads, unsigned grid_x, cudaStream_t stream) {
  switch (heads) {
    case 1: return launch_main<T, 1, kMode>(params, grid_x, stream);
    case 2: return launch_main<T, 2, kMode>(params, grid_x, stream);
    case 4: return launch_main<T, 4, kMode>(params, grid_x, stream);
    default: return launch_main<T, 8, kMode>(params, grid_x, stream);
  }
}

}  // namespace

std::size_t paged_decode_attention_workspace_bytes(int batch, int q_heads, int head_dim,
                                                   int max_context) {
  if (batch <= 0 || q_heads <= 0 || head_dim <= 0 || max_context <= kPartitionTokens) return 0;
  const std::size_t partitions = static_cast<std::size_t>(max_context - 1) / kPartitionTokens + 1;
  const std::size_t rows = static_cast<std::size_t>(batch) * q_heads * partitions;
  return sizeof(float) * rows * (static_cast<std::size_t>(head_dim) + 2);
}

template <typename T>
cudaError_t launch_paged_decode_attention(T* out, const T* q, int64_t q_stride, const T* key_cache,
                                          const T* value_cache, const int* block_tables,
                                          int max_blocks, const int* context_lens, int max_context,
                                          int batch, int q_heads, int kv_heads, int head_dim,
                                          int block_size, float scale, float* workspace,
                                          cudaStream_t stream) {
  if (out == nullptr || q == nullptr || key_cache == nullptr || value_cache == nullptr ||
      block_tables == nullptr || context_lens == nullptr || batch < 0 || head_dim <= 0 ||
      head_dim % 2 != 0 || head_dim > kMaxHeadDim || q_heads <= 0 || kv_heads <= 0 ||
      q_heads % kv_heads != 0 || block_size <= 0 || max_context <= 0 || max_blocks <= 0) {
    return cudaErrorInvalidValue;
  }
  if (batch == 0) return cudaSuccess;  // the workspace size is 0 then, it may be null
  const int partitions = (max_context - 1) / kPartitionTokens + 1;
  if (partitions > 1 && workspace == nullptr) return cudaErrorInvalidValue;

  const int group = q_heads / kv_heads;
  // Split a large group into the fewest chunks of at most kMaxHeadsPerCta heads, evenly.
  const int min_chunks = (group - 1) / kMaxHeadsPerCta + 1;
  const int heads_per_cta = (group - 1) / min_chunks + 1;
  const int head_chunks = (group - 1) / heads_per_cta + 1;
  const int heads = pow2_ceil(heads_per_cta);
  // K/V chunks: 4 elements when head_dim and both caches allow (every row offset is a multiple
  // of head_dim), else pairs (head_dim is even), with scalar loads if the caches are not even
  // aligned to two elements.
  int mode;
  if (head_dim % 4 == 0 && is_aligned(key_cache, 4 * sizeof(T)) &&
      is_aligned(value_cache, 4 * sizeof(T))) {
    mode = kQuad;
  } else if (is_aligned(key_cache, 2 * sizeof(T)) && is_aligned(value_cache, 2 * sizeof(T))) {
    mode = kPair;
  } else {
    mode = kPairScalar;
  }
  // Lanes per token: about four chunks per lane, at least four lanes per token.
  const int nchunks = head_dim / (mode == kQuad ? 4 : 2);
  int lanes = pow2_ceil((nchunks + 3) / 4);
  lanes = lanes < 4 ? 4 : (lanes > kWarpSize ? kWarpSize : lanes);

  Params<T> params;
  params.out = out;
  params.q = q;
  params.q_stride = q_stride;
  params.key_cache = key_cache;
  params.value_cache = value_cache;
  params.block_tables = block_tables;
  params.context_lens = context_lens;
  const std::size_t rows = static_cast<std::size_t>(batch) * q_heads * partitions;
  params.ws_acc = partitions > 1 ? workspace : nullptr;
  params.ws_max = partitions > 1 ? workspace + rows * head_dim : nullptr;
  params.ws_sum = partitions > 1 ? workspace + rows * head_dim + rows : nullptr;
  params.max_blocks = max_blocks;
  params.batch = batch;
  params.q_heads = q_heads;
  params.kv_heads = kv_heads;
  params.head_dim = head_dim;
  params.block_size = block_size;
  params.scale = scale;
  params.num_partitions = partitions;
  params.heads_per_cta = heads_per_cta;
  params.head_chunks = head_chunks;
  params.lanes_per_token = lanes;
  params.batch_offset = 0;
  params.partition_offset = 0;

  const int64_t grid_x = static_cast<int64_t>(kv_heads) * head_chunks;
  if (grid_x > 0x7fffffff) return cudaErrorInvalidValue;
  const unsigned gx = static_cast<unsigned>(grid_x);
  cudaError_t err;
  switch (mode) {
    case kQuad: err = launch_main<T, kQuad>(params, heads, gx, stream); break;
    case kPair: err = launch_main<T, kPair>(params, heads, gx, stream); break;
    default: err = launch_main<T, kPairScalar>(params, heads, gx, stream); break;
  }
  if (err != cudaSuccess || partitions == 1) return err;

  const dim3 reduce_grid(static_cast<unsigned>(q_heads), grid_yz(batch));
  const int reduce_threads = threads_for(head_dim, kMaxHeadDim);
  paged_attention_reduce_kernel<T><<<reduce_grid, reduce_threads, 0, stream>>>(
      out, params.ws_acc, params.ws_max, params.ws_sum, context_lens, batch, q_heads, head_dim,
      partitions);
  return cudaGetLastError();
}

#define HELIOS_INSTANTIATE_PAGED_ATTENTION(T)                                                     \
  template cudaError_t launch_paged_decode_attention<T>(                                          \
      T*, const T*, int64_t, const T*, const T*, const int*, int, const int*, int, int, int, int, \
      int, int, float, float*, cudaStream_t);

HELIOS_INSTANTIATE_PAGED_ATTENTION(float)
HELIOS_INSTANTIATE_PAGED_ATTENTION(__half)
HELIOS_INSTANTIATE_PAGED_ATTENTION(__nv_bfloat16)

#undef HELIOS_INSTANTIATE_PAGED_ATTENTION

}  // namespace helios::kernels
