// The fused CPU decode step against the ATen ops it replaces: each kernel of every instruction
// set this CPU runs, then whole decode steps (logits, exits, and the keys/values written,
// including those of the layers a row skipped) against the ATen step.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <dlfcn.h>

#include <cstdlib>
#include <numeric>
#include <random>

#include "common/expect_error.h"
#include "helios/cpu/blas_threads.h"
#include "helios/cpu/kernels.h"
#include "helios/engine/memory_plan.h"
#include "helios/model/transformer.h"
#include "helios/ops/activation.h"
#include "helios/ops/attention.h"
#include "helios/ops/rms_norm.h"
#include "transformer/test_model.h"

namespace helios {
namespace {

// The GPU kernels' float32 tolerance (tests/gpu/kernels_test.cpp), scaled for sums of `terms`.
void expect_close(const at::Tensor& actual, const at::Tensor& expected, const std::string& what,
                  double scale = 1.0) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const at::Tensor a = actual.to(at::kDouble), e = expected.to(at::kDouble);
  const at::Tensor excess = (a - e).abs() - (2e-5 * scale + 1e-5 * scale * e.abs());
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << what << ": max |diff| " << (a - e).abs().max().item<double>();
}

at::Tensor randn(at::IntArrayRef shape, uint64_t seed, double scale = 1.0) {
  at::manual_seed(seed);
  return at::randn(shape, at::TensorOptions().dtype(at::kFloat)) * scale;
}

class CpuKernels : public ::testing::TestWithParam<std::string> {
 protected:
  const cpu::Kernels& k() const { return *cpu::kernels_named(GetParam()); }
};

TEST_P(CpuKernels, LinearMatchesATenAtEveryTileAndTail) {
  for (const int64_t rows : {1, 2, 3, 5, 8}) {
    for (const int64_t in : {7, 37, 64, 160}) {
      for (const int64_t out : {1, 6, 13, 64}) {
        const at::Tensor x = randn({rows, in}, rows * 100 + in);
        const at::Tensor w = randn({out, in}, out * 7 + in);
        at::Tensor y = at::full({rows, out + 3}, 7.0f);  // ldy > out: the padding stays
        // Two column ranges, as two threads would split them.
        const int64_t split = out / 2;
        k().linear(x.data_ptr<float>(), rows, in, w.data_ptr<float>(), in, 0, split,
                   y.data_ptr<float>(), out + 3);
        k().linear(x.data_ptr<float>(), rows, in, w.data_ptr<float>(), in, split, out,
                   y.data_ptr<float>(), out + 3);
        const std::string what = "linear " + std::to_string(rows) + "x" + std::to_string(in) +
                                 "->" + std::to_string(out);
        expect_close(y.narrow(1, 0, out), at::linear(x, w), what, 4.0);
        EXPECT_TRUE(at::equal(y.narrow(1, out, 3), at::full({rows, 3}, 7.0f))) << what;
      }
    }
  }
}

TEST_P(CpuKernels, NormsActivationsAndAddMatchTheOps) {
  for (const int64_t n : {5, 32, 40, 160}) {
    const at::Tensor h = randn({n}, n, 3.0), a = randn({n}, n + 1), w = randn({n}, n + 2);
    at::Tensor residual = h.clone(), fused = h.clone(), out = at::empty({n});
    k().add_rms_norm(fused.data_ptr<float>(), a.data_ptr<float>(), w.data_ptr<float>(), n, 1e-5f,
                     out.data_ptr<float>());
    const at::Tensor expected = ops::add_rms_norm(residual, a, w, 1e-5);
    expect_close(fused, residual, "add_rms_norm residual");
    expect_close(out, expected, "add_rms_norm");
    k().add_rms_norm(fused.data_ptr<float>(), nullptr, w.data_ptr<float>(), n, 1e-5f,
                     out.data_ptr<float>());
    expect_close(out, ops::rms_norm(residual, w, 1e-5), "rms_norm");

    // Gates across silu's whole range, the clamps of the vector exp included.
    const at::Tensor gate = at::linspace(-100.0, 100.0, n), up = randn({n}, n + 3);
    at::Tensor act = at::empty({n});
    k().silu_mul(gate.data_ptr<float>(), up.data_ptr<float>(), act.data_ptr<float>(), n);
    expect_close(act, ops::silu_mul(gate, up), "silu_mul");

    at::Tensor sum = h.clone();
    k().add(sum.data_ptr<float>(), a.data_ptr<float>(), n);
    expect_close(sum, h + a, "add");
  }
}

TEST_P(CpuKernels, SoftmaxStatsMatchLogSoftmax) {
  for (const int64_t n : {3, 50, 258}) {
    for (const double spread : {0.1, 5.0, 60.0}) {  // flat, middling, one-hot
      const at::Tensor logits = randn({n}, n + static_cast<uint64_t>(spread), spread);
      float lse = 0, max_logit = 0, entropy = 0;
      k().softmax_stats(logits.data_ptr<float>(), n, &lse, &max_logit, &entropy);
      const at::Tensor lp = at::log_softmax(logits.to(at::kDouble), -1);
      const double expected_entropy = -(lp.exp() * lp).nan_to_num(0.0).sum().item<double>();
      EXPECT_NEAR(max_logit, logits.max().item<float>(), 0.0f);
      EXPECT_NEAR(lse, at::logsumexp(logits.to(at::kDouble), 0).item<double>(),
                  1e-5 * spread + 1e-5);
      EXPECT_NEAR(entropy, expected_entropy, 1e-5 + 1e-5 * expected_entropy)
          << "n " << n << " spread " << spread;
    }
  }
}

// Paged attention of one KV head group over a shuffled block table against a gather and
// ops::attention.
TEST_P(CpuKernels, AttendReadsThePagedCacheInPlace) {
  const int64_t kv_heads = 2, group = 2, block_size = 4, blocks = 12;
  for (const int64_t hd : {8, 24, 32}) {
    const at::Tensor keys = randn({blocks * block_size, kv_heads, hd}, hd);
    const at::Tensor values = randn({blocks * block_size, kv_heads, hd}, hd + 1);
    std::vector<int32_t> table(blocks);
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937(static_cast<uint32_t>(hd)));
    for (const int64_t context : {1, 4, 5, 17, 48}) {
      for (const int64_t g : {0, 1}) {
        const at::Tensor q = randn({group, hd}, context * 10 + g, 2.0);
        std::vector<float> scores(group * context);
        at::Tensor out = at::empty({group, hd});
        cpu::AttendArgs a;
        a.q = q.data_ptr<float>();
        a.keys = keys.data_ptr<float>();
        a.values = values.data_ptr<float>();
        a.block_table = table.data();
        a.block_size = block_size;
        a.context = context;
        a.kv_heads = kv_heads;
        a.head_dim = hd;
        a.kv_head = g;
        a.group = group;
        a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
        a.scores = scores.data();
        a.out = out.data_ptr<float>();
        k().attend(a);

        std::vector<int64_t> slots;
        for (int64_t p = 0; p < context; ++p)
          slots.push_back(table[p / block_size] * block_size + p % block_size);
        const at::Tensor index = at::tensor(slots, at::TensorOptions().dtype(at::kLong));
        const at::Tensor k_rows =
            keys.index_select(0, index).select(1, g).view({1, context, 1, hd});
        const at::Tensor v_rows =
            values.index_select(0, index).select(1, g).view({1, context, 1, hd});
        const at::Tensor expected = ops::attention(q.view({1, 1, group, hd}), k_rows, v_rows,
                                                   at::zeros({1, 1, 1, 1, context}), a.scale);
        expect_close(out.view({1, 1, group * hd}), expected,
                     "attend hd " + std::to_string(hd) + " context " + std::to_string(context));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(EveryInstructionSet, CpuKernels,
                         ::testing::ValuesIn(cpu::available_kernels()),
                         [](const auto& info) { return info.param; });

// Whole decode steps: one transformer on the ATen ops, one fused, same weights, each with its
// own cache filled by the same prefills; every step feeds both the reference's greedy tokens.
class FusedCpuDecode : public ::testing::TestWithParam<std::string> {
 protected:
  struct Outcome {
    int64_t early = 0, full = 0;  // exits before / at the last layer, over every step
  };

  Outcome compare(const model::ModelConfig& config, const model::ExitPolicy& policy,
                  int64_t steps) {
    const model::ModelWeights weights = testing::peaked_weights(config, 5);
    model::Transformer reference(config, weights), fused(config, weights);
    reference.set_fused_cpu_decode(false);
    fused.set_fused_cpu_decode(true, GetParam());
    EXPECT_FALSE(reference.fused_cpu_decode());
    EXPECT_TRUE(fused.fused_cpu_decode());
    EXPECT_EQ(fused.cpu_kernels(), GetParam());

    const int64_t batch = 5;
    kv::KvCache ref_cache = engine::make_cache_for(reference, batch, 64, /*block_size=*/4);
    kv::KvCache fused_cache = engine::make_cache_for(fused, batch, 64, /*block_size=*/4);
    std::vector<kv::SequenceKv> ref_seqs(batch), fused_seqs(batch);
    std::vector<kv::SequenceKv*> ref_ptrs, fused_ptrs;
    std::vector<int32_t> next(batch);
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<int32_t> prompt;
      for (int64_t i = 0; i < 3 + 2 * b; ++i)
        prompt.push_back(static_cast<int32_t>((b * 7 + i * 3) % config.vocab_size));
      // Interleaved reservations, so that the rows' blocks are not contiguous.
      EXPECT_TRUE(ref_cache.reserve(ref_seqs[b], static_cast<int64_t>(prompt.size()) + steps));
      EXPECT_TRUE(fused_cache.reserve(fused_seqs[b], static_cast<int64_t>(prompt.size()) + steps));
      const auto out = reference.prefill(ref_cache, ref_seqs[b], prompt, policy);
      fused.prefill(fused_cache, fused_seqs[b], prompt, policy);
      next[b] = static_cast<int32_t>(out.logits[0].argmax().item<int64_t>());
      ref_ptrs.push_back(&ref_seqs[b]);
      fused_ptrs.push_back(&fused_seqs[b]);
    }
    Outcome outcome;
    for (int64_t step = 0; step < steps; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      const auto expected = reference.decode(ref_cache, ref_ptrs, next, policy);
      const auto actual = fused.decode(fused_cache, fused_ptrs, next, policy);
      expect_close(actual.logits, expected.logits, "logits", 10.0);
      for (int64_t b = 0; b < batch; ++b) {
        EXPECT_EQ(actual.exits[b].exit_layer, expected.exits[b].exit_layer) << "row " << b;
        EXPECT_NEAR(actual.exits[b].confidence, expected.exits[b].confidence, 1e-4) << "row " << b;
        EXPECT_EQ(actual.exits[b].greedy_exit, expected.exits[b].greedy_exit) << "row " << b;
        (expected.exits[b].exit_layer < reference.loaded_layers() ? outcome.early : outcome.full) +=
            1;
        EXPECT_EQ(fused_seqs[b].length, ref_seqs[b].length);
      }
      const at::Tensor argmax = expected.logits.argmax(-1);
      for (int64_t b = 0; b < batch; ++b) next[b] = static_cast<int32_t>(argmax[b].item<int64_t>());
    }
    // Every key and value either path wrote, in every layer: those of the layers skipped by
    // rows that left early included.
    for (int64_t l = 0; l < reference.loaded_layers(); ++l) {
      for (int64_t b = 0; b < batch; ++b) {
        const at::Tensor slots = ref_cache.slots(ref_seqs[b], 0, ref_seqs[b].length);
        const at::Tensor fused_slots = fused_cache.slots(fused_seqs[b], 0, fused_seqs[b].length);
        expect_close(fused_cache.keys(l).index_select(0, fused_slots),
                     ref_cache.keys(l).index_select(0, slots),
                     "keys of layer " + std::to_string(l) + " row " + std::to_string(b), 10.0);
        expect_close(fused_cache.values(l).index_select(0, fused_slots),
                     ref_cache.values(l).index_select(0, slots),
                     "values of layer " + std::to_string(l) + " row " + std::to_string(b), 10.0);
      }
    }
    return outcome;
  }
};

TEST_P(FusedCpuDecode, MatchesTheATenStepWithRowsLeavingEarly) {
  const Outcome o = compare(testing::tiny_config(4), model::ExitPolicy{0.6}, 12);
  EXPECT_GT(o.early, 0);
  EXPECT_GT(o.full, 0);
}

TEST_P(FusedCpuDecode, MatchesTheATenStepOnEntropyAndWithoutEarlyExit) {
  model::ExitPolicy entropy{0.5};
  entropy.metric = model::ConfidenceMetric::kEntropy;
  const Outcome o = compare(testing::tiny_config(3), entropy, 8);
  EXPECT_GT(o.early + o.full, 0);
  const Outcome none = compare(testing::tiny_config(3), model::ExitPolicy{2.0}, 8);
  EXPECT_EQ(none.early, 0);
}

// Widths that are no multiple of any vector width: every kernel's scalar tail.
TEST_P(FusedCpuDecode, MatchesTheATenStepAtOddWidths) {
  model::ModelConfig config = testing::tiny_config(3);
  config.hidden_size = 40;  // head_dim 10
  config.intermediate_size = 72;
  config.vocab_size = 37;
  compare(config, model::ExitPolicy{0.5}, 8);
}

// The prefill's projections and exit heads go through the same kernels when the fused step is
// on (Transformer::linear): the prompt's last logits, its exit and its scores at every exit
// point agree with the ATen ops'.
TEST_P(FusedCpuDecode, PrefillAndPromptScoresMatchTheATenOps) {
  const model::ModelConfig config = testing::tiny_config(4);
  const model::ModelWeights weights = testing::peaked_weights(config, 5);
  model::Transformer reference(config, weights), fused(config, weights);
  reference.set_fused_cpu_decode(false);
  fused.set_fused_cpu_decode(true, GetParam());
  kv::KvCache ref_cache = engine::make_cache_for(reference, 1, 64, /*block_size=*/4);
  kv::KvCache fused_cache = engine::make_cache_for(fused, 1, 64, /*block_size=*/4);
  kv::SequenceKv ref_seq, fused_seq;
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < 29; ++i) prompt.push_back(static_cast<int32_t>((i * 5 + 3) % config.vocab_size));
  ASSERT_TRUE(ref_cache.reserve(ref_seq, static_cast<int64_t>(prompt.size())));
  ASSERT_TRUE(fused_cache.reserve(fused_seq, static_cast<int64_t>(prompt.size())));
  const model::ExitPolicy policy{0.6};
  const auto expected = reference.prefill(ref_cache, ref_seq, prompt, policy, true, {}, 7);
  const auto actual = fused.prefill(fused_cache, fused_seq, prompt, policy, true, {}, 7);
  expect_close(actual.logits, expected.logits, "logits", 10.0);
  ASSERT_EQ(actual.exits.size(), expected.exits.size());
  EXPECT_EQ(actual.exits[0].exit_layer, expected.exits[0].exit_layer);
  EXPECT_NEAR(actual.exits[0].confidence, expected.exits[0].confidence, 1e-4);
  const model::ExitScores& a = actual.prompt_scores;
  const model::ExitScores& e = expected.prompt_scores;
  EXPECT_EQ(a.tokens, e.tokens);
  ASSERT_EQ(a.nll_sum.size(), e.nll_sum.size());
  for (size_t i = 0; i < e.nll_sum.size(); ++i) {
    EXPECT_NEAR(a.nll_sum[i], e.nll_sum[i], 1e-3 * std::max(1.0, std::abs(e.nll_sum[i]))) << i;
    EXPECT_NEAR(a.policy_nll_sum[i], e.policy_nll_sum[i],
                1e-3 * std::max(1.0, std::abs(e.policy_nll_sum[i]))) << i;
  }
  EXPECT_EQ(a.exit_histogram, e.exit_histogram);
  for (int64_t l = 0; l < reference.loaded_layers(); ++l) {
    expect_close(fused_cache.keys(l).index_select(0, fused_cache.slots(fused_seq, 0, fused_seq.length)),
                 ref_cache.keys(l).index_select(0, ref_cache.slots(ref_seq, 0, ref_seq.length)),
                 "keys of layer " + std::to_string(l), 10.0);
  }
}

INSTANTIATE_TEST_SUITE_P(EveryInstructionSet, FusedCpuDecode,
                         ::testing::ValuesIn(cpu::available_kernels()),
                         [](const auto& info) { return info.param; });

TEST(FusedCpuDecodeSelection, NamedKernelsMustExistAndNonFloatWeightsUseATen) {
  const auto config = testing::tiny_config(2);
  const model::ModelWeights weights = testing::peaked_weights(config);
  model::Transformer t(config, weights);
  EXPECT_TRUE(t.fused_cpu_decode());
  EXPECT_EQ(t.cpu_kernels(), cpu::available_kernels().front());
  testing::expect_error([&] { t.set_fused_cpu_decode(true, "sse9"); }, ErrorCode::kInvalidArgument,
                        {"sse9", "not available"});
  t.set_fused_cpu_decode(false);
  EXPECT_FALSE(t.fused_cpu_decode());
  EXPECT_EQ(t.cpu_kernels(), "");

  model::ModelWeights half = testing::peaked_weights(config);
  for (auto& layer : half.layers) {
    for (at::Tensor* tensor : layer.mutable_tensors()) *tensor = tensor->to(at::kBFloat16);
  }
  const model::Transformer bf16(config, half);
  EXPECT_FALSE(bf16.fused_cpu_decode());
}

}  // namespace
// The daemon sizes OpenBLAS's pool as ATen's, so that no idle BLAS worker spins on a core
// the serving threads need.
TEST(BlasThreads, OpenBlasGetsAsManyThreadsAsATen) {
  using GetThreads = int (*)();
  auto* get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  const bool env = std::getenv("OPENBLAS_NUM_THREADS") != nullptr ||
                   std::getenv("OMP_NUM_THREADS") != nullptr;
  const int set = cpu::match_blas_threads();
  if (get == nullptr || env) {
    EXPECT_EQ(set, 0);
    GTEST_SKIP() << (env ? "the environment sets the BLAS threads" : "libtorch's BLAS is not OpenBLAS");
  }
  EXPECT_EQ(set, std::max(1, at::get_num_threads()));
  EXPECT_EQ(get(), set);
}

}  // namespace helios
