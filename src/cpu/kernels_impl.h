#pragma once

// The decode kernels, written once over a SIMD traits type S and instantiated by each
// instruction set's translation unit inside its own anonymous namespace (so no inline function
// compiled for one instruction set can be picked by the linker for another). S provides:
//   V, W (lanes), zero(), load(p), store(p, v), set1(f), add, sub, mul, max, fmadd(a, b, c)
//   (a * b + c), hsum(v), hmax(v), exp(v).
// Only builtins are called here, never a library template, for the same reason.
//
// Include this header only inside an anonymous namespace, after defining S.

constexpr float kLowestFloat = -3.4028234663852886e38f;

template <class S, int R, int C>
inline void linear_tile(const float* x, int64_t ldx, const float* w, int64_t in, float* y,
                        int64_t ldy) {
  typename S::V acc[R][C];
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) acc[r][c] = S::zero();
  }
  int64_t k = 0;
  for (; k + S::W <= in; k += S::W) {
    typename S::V wv[C];
    for (int c = 0; c < C; ++c) wv[c] = S::load(w + c * in + k);
    for (int r = 0; r < R; ++r) {
      const typename S::V xv = S::load(x + r * ldx + k);
      for (int c = 0; c < C; ++c) acc[r][c] = S::fmadd(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      float sum = S::hsum(acc[r][c]);
      for (int64_t t = k; t < in; ++t) sum += x[r * ldx + t] * w[c * in + t];
      y[r * ldy + c] = sum;
    }
  }
}

// Columns outermost: a block of C weight rows stays in L1 while every input row passes over it.
template <class S, int R, int C>
void linear(const float* x, int64_t rows, int64_t ldx, const float* w, int64_t in,
            int64_t col_begin, int64_t col_end, float* y, int64_t ldy) {
  int64_t c = col_begin;
  for (; c + C <= col_end; c += C) {
    int64_t r = 0;
    for (; r + R <= rows; r += R) {
      linear_tile<S, R, C>(x + r * ldx, ldx, w + c * in, in, y + r * ldy + c, ldy);
    }
    for (; r < rows; ++r)
      linear_tile<S, 1, C>(x + r * ldx, ldx, w + c * in, in, y + r * ldy + c, ldy);
  }
  for (; c < col_end; ++c) {
    int64_t r = 0;
    for (; r + R <= rows; r += R) {
      linear_tile<S, R, 1>(x + r * ldx, ldx, w + c * in, in, y + r * ldy + c, ldy);
    }
    for (; r < rows; ++r)
      linear_tile<S, 1, 1>(x + r * ldx, ldx, w + c * in, in, y + r * ldy + c, ldy);
  }
}

template <class S>
void add(float* h, const float* a, int64_t n) {
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) S::store(h + i, S::add(S::load(h + i), S::load(a + i)));
  for (; i < n; ++i) h[i] += a[i];
}

template <class S>
void add_rms_norm(float* h, const float* a, const float* weight, int64_t n, float eps, float* out) {
  typename S::V squares = S::zero();
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) {
    typename S::V v = S::load(h + i);
    if (a != nullptr) {
      v = S::add(v, S::load(a + i));
      S::store(h + i, v);
    }
    squares = S::fmadd(v, v, squares);
  }
  float sum = S::hsum(squares);
  for (; i < n; ++i) {
    if (a != nullptr) h[i] += a[i];
    sum += h[i] * h[i];
  }
  const float inv = 1.0f / __builtin_sqrtf(sum / static_cast<float>(n) + eps);
  const typename S::V scale = S::set1(inv);
  i = 0;
  for (; i + S::W <= n; i += S::W) {
    S::store(out + i, S::mul(S::mul(S::load(h + i), scale), S::load(weight + i)));
  }
  for (; i < n; ++i) out[i] = h[i] * inv * weight[i];
}

template <class S>
void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  const typename S::V one = S::set1(1.0f);
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) {
    const typename S::V g = S::load(gate + i);
    const typename S::V e = S::exp(S::sub(S::zero(), g));
    S::store(out + i, S::mul(S::div(g, S::add(one, e)), S::load(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + __builtin_expf(-gate[i])) * up[i];
}

template <class S>
inline float dot(const float* a, const float* b, int64_t n) {
  typename S::V acc = S::zero();
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) acc = S::fmadd(S::load(a + i), S::load(b + i), acc);
  float sum = S::hsum(acc);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// out += p * v over n values.
template <class S>
inline void axpy(float p, const float* v, float* out, int64_t n) {
  const typename S::V pv = S::set1(p);
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W)
    S::store(out + i, S::fmadd(pv, S::load(v + i), S::load(out + i)));
  for (; i < n; ++i) out[i] += p * v[i];
}

// exp(x - shift) in place over n values; returns their sum.
template <class S>
inline float exp_shifted(float* x, int64_t n, float shift) {
  const typename S::V s = S::set1(shift);
  typename S::V total = S::zero();
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) {
    const typename S::V e = S::exp(S::sub(S::load(x + i), s));
    S::store(x + i, e);
    total = S::add(total, e);
  }
  float sum = S::hsum(total);
  for (; i < n; ++i) {
    x[i] = __builtin_expf(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

template <class S>
inline float max_of(const float* x, int64_t n) {
  typename S::V m = S::set1(kLowestFloat);
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) m = S::max(m, S::load(x + i));
  float best = S::hmax(m);
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  return best;
}

// Keys and values are read where they lie in the paged cache (no gather): each position's key
// is scored against every query head of the group, so a KV head's entries are read once per
// row whatever the group size.
template <class S>
void attend(const cpu::AttendArgs& a) {
  const int64_t hd = a.head_dim, stride = a.kv_heads * hd, ctx = a.context, bs = a.block_size;
  const int64_t offset = a.kv_head * hd;
  // Block by block: position p sits at slot block_table[p / bs] * bs + p % bs.
  for (int64_t start = 0, block = 0; start < ctx; start += bs, ++block) {
    const float* k = a.keys + static_cast<int64_t>(a.block_table[block]) * bs * stride + offset;
    const int64_t count = ctx - start < bs ? ctx - start : bs;
    for (int64_t i = 0; i < count; ++i, k += stride) {
      for (int64_t j = 0; j < a.group; ++j) {
        a.scores[j * ctx + start + i] = dot<S>(a.q + j * hd, k, hd) * a.scale;
      }
    }
  }
  for (int64_t j = 0; j < a.group; ++j) {
    float* s = a.scores + j * ctx;
    const float inv = 1.0f / exp_shifted<S>(s, ctx, max_of<S>(s, ctx));
    for (int64_t p = 0; p < ctx; ++p) s[p] *= inv;
    float* out = a.out + j * hd;
    for (int64_t i = 0; i < hd; ++i) out[i] = 0.0f;
  }
  for (int64_t start = 0, block = 0; start < ctx; start += bs, ++block) {
    const float* v = a.values + static_cast<int64_t>(a.block_table[block]) * bs * stride + offset;
    const int64_t count = ctx - start < bs ? ctx - start : bs;
    for (int64_t i = 0; i < count; ++i, v += stride) {
      for (int64_t j = 0; j < a.group; ++j)
        axpy<S>(a.scores[j * ctx + start + i], v, a.out + j * hd, hd);
    }
  }
}

// In float32 up to the entropy's sum, which is taken in double: entropy = log(sum) -
// sum(p * (l - max)) avoids the cancellation of lse - sum(p * l) for confident rows.
template <class S>
void softmax_stats(const float* logits, int64_t n, float* log_sum_exp, float* max_logit,
                   float* entropy) {
  const float m = max_of<S>(logits, n);
  const typename S::V mv = S::set1(m);
  typename S::V total = S::zero();
  int64_t i = 0;
  for (; i + S::W <= n; i += S::W) total = S::add(total, S::exp(S::sub(S::load(logits + i), mv)));
  double sum = S::hsum(total);
  for (; i < n; ++i) sum += __builtin_expf(logits[i] - m);
  *max_logit = m;
  *log_sum_exp = m + static_cast<float>(__builtin_log(sum));
  if (entropy != nullptr) {
    double weighted = 0.0;
    for (int64_t t = 0; t < n; ++t) {
      const double shifted = static_cast<double>(logits[t]) - m;
      weighted += __builtin_exp(shifted) * shifted;
    }
    *entropy = static_cast<float>(__builtin_log(sum) - weighted / sum);
  }
}

// The table of one instruction set; R x C is its linear tile (accumulators held in registers).
template <class S, int R, int C>
cpu::Kernels make_kernels(const char* name) {
  return cpu::Kernels{name,    &linear<S, R, C>, &add_rms_norm<S>, &silu_mul<S>,
                      &add<S>, &attend<S>,       &softmax_stats<S>};
}
