// bf16 small-M matmul for B=1 decoding on CPUs with AVX512-BF16 (models/cpu_gemv.py builds it).
//
// y[M, N] (fp32) = x[M, K] (bf16) . w[N, K]^T (bf16), fp32 accumulation, M in 1..32: the
// weights-left dot of the kernel decode layout (layers.mm_left), w packed by cpu_gemv.pack as
// [N / 4, K / 32, 4, 32] (4 rows interleaved in 32-element pieces). A core reads w as one
// sequential stream, which the hardware prefetcher follows at the full read bandwidth, and keeps
// 4 x M independent accumulators (vdpbf16ps: 32 products per instruction). Reading 4 unpacked
// rows side by side (4 streams 1 KB apart) halved a core's read rate; one unpacked row at a time
// left M <= 8 accumulators and re-loaded x per row (/tmp microbenchmark, AMD EPYC, one core,
// 576 x 1536: packed 1.3-1.5x faster at M = 1..8). Row blocks of w are
// split in chunks that the calling thread and XLA's intra-op pool threads take from one atomic
// counter, so a pool thread that starts late finds nothing left and no thread ever waits for
// work that has not been claimed (no deadlock when the pool is busy).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if !defined(__AVX512BF16__)
#error "cpu_gemv needs AVX512-BF16 (cpu_gemv.py builds it only where /proc/cpuinfo has avx512_bf16)"
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowBlock = 4;  // weight rows packed together (cpu_gemv.ROW_BLOCK)
constexpr int64_t kChunksPerThread = 4;  // units of work per thread (a late thread still gets some)
constexpr int64_t kMinChunk = 8;  // row blocks (32 rows of w)

template <typename E>
struct Work {
  const E* x;
  const E* w;
  float* y;
  int64_t m, n, k, chunks, chunk;  // chunk: row blocks per unit of work
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// One piece of 32 elements of x (loaded once per piece and token row, used for the block's
// rows) and acc += w . x over it: one vdpbf16ps (bf16) or two FMAs (fp32), the lanes in the same
// order for every M.
struct Bf16Piece {
  __m512bh v;
  void load(const uint16_t* x) { v = (__m512bh)_mm512_loadu_si512(x); }
  __m512 fma(__m512 acc, const uint16_t* w) const {
    return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(w), v);
  }
};
struct F32Piece {
  __m512 lo, hi;
  void load(const float* x) {
    lo = _mm512_loadu_ps(x);
    hi = _mm512_loadu_ps(x + 16);
  }
  __m512 fma(__m512 acc, const float* w) const {
    return _mm512_fmadd_ps(_mm512_loadu_ps(w + 16), hi, _mm512_fmadd_ps(_mm512_loadu_ps(w), lo, acc));
  }
};
template <typename E>
using Piece = std::conditional_t<std::is_same_v<E, float>, F32Piece, Bf16Piece>;

// Row block b (kRowBlock weight rows, packed as [K / 32][kRowBlock][32]: one sequential stream)
// against token rows m0 .. m0 + MG - 1: MG x kRowBlock independent accumulators, each x piece
// loaded once for the block's rows. Every (row, token) sum runs in the same order (its pieces in
// turn, then one horizontal add) for every M and grouping, so an output does not depend on how
// many token rows came with it.
template <int MG, typename E>
inline void block(const Work<E>& s, int64_t b, int64_t m0) {
  const int64_t kc = s.k / 32;
  const E* wb = s.w + b * kRowBlock * s.k;
  __m512 acc[MG][kRowBlock];
  _Pragma("GCC unroll 16") for (int m = 0; m < MG; ++m)
    _Pragma("GCC unroll 4") for (int r = 0; r < kRowBlock; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t c = 0; c < kc; ++c) {
    Piece<E> xv[MG];
    _Pragma("GCC unroll 16") for (int m = 0; m < MG; ++m) xv[m].load(s.x + (m0 + m) * s.k + c * 32);
    _Pragma("GCC unroll 4") for (int r = 0; r < kRowBlock; ++r) {
      const E* wp = wb + (c * kRowBlock + r) * 32;
      _Pragma("GCC unroll 16") for (int m = 0; m < MG; ++m) acc[m][r] = xv[m].fma(acc[m][r], wp);
    }
  }
  _Pragma("GCC unroll 16") for (int m = 0; m < MG; ++m)
    _Pragma("GCC unroll 4") for (int r = 0; r < kRowBlock; ++r)
      s.y[(m0 + m) * s.n + b * kRowBlock + r] = _mm512_reduce_add_ps(acc[m][r]);
}

// Token rows in groups of at most 4 (16 accumulators and the pieces in flight fit the 32 vector
// registers); the next group re-reads the block from L1.
template <typename E>
void chunk(const Work<E>& s, int64_t lo, int64_t hi) {
  for (int64_t b = lo; b < hi; ++b) {
    int64_t m0 = 0;
    for (; m0 + 4 <= s.m; m0 += 4) block<4>(s, b, m0);
    switch (s.m - m0) {
      case 3: block<3>(s, b, m0); break;
      case 2: block<2>(s, b, m0); break;
      case 1: block<1>(s, b, m0); break;
      default: break;
    }
  }
}

constexpr int64_t kMaxM = 32;  // token rows per call (cpu_gemv.MAX_ROWS routes up to 16)

template <typename E>
void drain(Work<E>& s) {
  const int64_t blocks = s.n / kRowBlock;
  for (;;) {
    const int64_t c = s.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= s.chunks) return;
    const int64_t lo = c * s.chunk;
    chunk(s, lo, lo + s.chunk < blocks ? lo + s.chunk : blocks);
    s.done.fetch_add(1, std::memory_order_release);
  }
}

template <ffi::DataType T>
using Elem = std::conditional_t<T == ffi::DataType::F32, float, uint16_t>;

template <ffi::DataType T>
ffi::Error Gemv(ffi::ThreadPool pool, ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<ffi::F32> y) {
  using E = Elem<T>;
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 4 || wd[2] != kRowBlock || wd[3] != 32 || xd[1] != wd[1] * 32 ||
      xd[0] < 1 || xd[0] > kMaxM)
    return ffi::Error::InvalidArgument(
        "cpu_gemv: expects x [M, K] with 1 <= M <= 32 and w packed [N / 4, K / 32, 4, 32] (cpu_gemv.pack)");
  auto s = std::make_shared<Work<E>>();  // shared: a pool task may start after this call returned
  s->x = reinterpret_cast<const E*>(x.untyped_data());
  s->w = reinterpret_cast<const E*>(w.untyped_data());
  s->y = y->typed_data();
  s->m = xd[0];
  s->n = wd[0] * kRowBlock;
  s->k = xd[1];
  // few large contiguous chunks: each stays one sequential stream for the prefetcher
  const int64_t threads = pool.num_threads() > 0 ? pool.num_threads() : 1;
  const int64_t blocks = wd[0];
  s->chunk = (blocks + kChunksPerThread * threads - 1) / (kChunksPerThread * threads);
  s->chunk = s->chunk < kMinChunk ? kMinChunk : s->chunk;
  s->chunks = (blocks + s->chunk - 1) / s->chunk;
  int64_t helpers = pool.num_threads() - 1;
  if (helpers > s->chunks - 1) helpers = s->chunks - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([s] { drain(*s); });
  drain(*s);
  // every unfinished chunk is held by a running thread: wait for those only
  while (s->done.load(std::memory_order_acquire) < s->chunks) _mm_pause();
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------------------
// Cached attention of a few new tokens (decode / verification), with the cache write fused in.
//
// keys/values [B, S, Hkv, D] (bf16) get k/v [B, T, Hkv, D] at slots [B, T] (slots >= S dropped),
// then every query (b, t, head) attends over the slots s < max_t slots[b, t] + 1 that
// mask[b, t, s] allows: scores = q . key (bf16 products, fp32 sums) * D^-1/2, an fp32 softmax,
// out = sum_s p_s value_s in fp32, rounded to bf16. Each query is computed by the same
// instructions whatever T is (a k-token verification gives the one-token step's numbers) and
// reads only the filled prefix of the cache. Work items (b, t, kv head) are split like the
// matmul's chunks when there is enough of it.

inline __m512 load16(const uint16_t* p) {  // 16 bf16 -> 16 fp32 (exact)
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16));
}
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

inline float to_f32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
inline float to_f32(float f) { return f; }

inline void from_f32(float f, uint16_t* out) {  // round to nearest even (NaN stays NaN)
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    *out = uint16_t((bits >> 16) | 0x40);
    return;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  *out = uint16_t(bits >> 16);
}
inline void from_f32(float f, float* out) { *out = f; }

template <typename E>
inline float dot(const float* q, const E* k, int64_t d) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), load16(k + i), acc);
  float tail = 0.f;
  for (; i < d; ++i) tail += q[i] * to_f32(k[i]);
  return _mm512_reduce_add_ps(acc) + tail;
}

template <typename E>
struct AttnWork {
  const E *q, *keys, *values;
  const int32_t* slots;
  const bool* mask;
  E* out;
  int64_t b, t, h, hkv, s, d;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

template <typename E>
void attend_item(const AttnWork<E>& w, int64_t item) {
  const int64_t kh = item % w.hkv, bt = item / w.hkv, b = bt / w.t;
  int64_t used = 0;
  for (int64_t j = 0; j < w.t; ++j) {
    const int64_t slot = w.slots[b * w.t + j] + 1;
    used = slot > used ? slot : used;
  }
  used = used < w.s ? used : w.s;
  const int64_t group = w.h / w.hkv, d = w.d;
  const float scale = 1.0f / std::sqrt(float(d));
  // per-thread scratch, grown once: no allocation per layer and token
  thread_local std::vector<float> qf, scores, acc;
  qf.resize(group * d);
  scores.resize(group * (used > 0 ? used : 1));
  acc.resize(d);
  for (int64_t g = 0; g < group; ++g)
    for (int64_t i = 0; i < d; ++i) qf[g * d + i] = to_f32(w.q[(bt * w.h + kh * group + g) * d + i]);
  const bool* mrow = w.mask + bt * w.s;
  const int64_t stride = w.hkv * d;
  const E* kbase = w.keys + (b * w.s * w.hkv + kh) * d;
  const E* vbase = w.values + (b * w.s * w.hkv + kh) * d;
  for (int64_t g = 0; g < group; ++g) {
    float* sc = scores.data() + g * used;
    float top = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < used; ++s) {
      if (!mrow[s]) continue;
      sc[s] = dot(qf.data() + g * d, kbase + s * stride, d) * scale;
      top = sc[s] > top ? sc[s] : top;
    }
    float total = 0.f;
    for (int64_t s = 0; s < used; ++s)
      if (mrow[s]) { sc[s] = std::exp(sc[s] - top); total += sc[s]; }
    std::fill(acc.begin(), acc.end(), 0.f);
    if (total > 0.f) {
      const float inv = 1.0f / total;
      for (int64_t s = 0; s < used; ++s) {
        if (!mrow[s]) continue;
        const __m512 p = _mm512_set1_ps(sc[s] * inv);
        const E* vrow = vbase + s * stride;
        int64_t i = 0;
        for (; i + 16 <= d; i += 16)
          _mm512_storeu_ps(acc.data() + i, _mm512_fmadd_ps(p, load16(vrow + i), _mm512_loadu_ps(acc.data() + i)));
        for (; i < d; ++i) acc[i] += sc[s] * inv * to_f32(vrow[i]);
      }
    }
    E* o = w.out + (bt * w.h + kh * group + g) * d;
    for (int64_t i = 0; i < d; ++i) from_f32(acc[i], o + i);
  }
}

template <typename E>
void attend_drain(AttnWork<E>& w, int64_t items) {
  for (;;) {
    const int64_t c = w.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= items) return;
    attend_item(w, c);
    w.done.fetch_add(1, std::memory_order_release);
  }
}

template <ffi::DataType T>
ffi::Error Attend(ffi::ThreadPool pool, ffi::Buffer<T> q, ffi::Buffer<T> k, ffi::Buffer<T> v, ffi::Buffer<T> keys,
                  ffi::Buffer<T> values, ffi::Buffer<ffi::S32> slots, ffi::Buffer<ffi::PRED> mask,
                  ffi::ResultBuffer<T> out, ffi::ResultBuffer<T> keys_out, ffi::ResultBuffer<T> values_out) {
  using E = Elem<T>;
  const auto qd = q.dimensions(), cd = keys.dimensions(), kd = k.dimensions();
  if (qd.size() != 4 || cd.size() != 4 || kd.size() != 4 || kd[0] != qd[0] || kd[1] != qd[1] ||
      cd[0] != qd[0] || cd[2] != kd[2] || cd[3] != qd[3] || kd[3] != qd[3] || qd[2] % cd[2] != 0)
    return ffi::Error::InvalidArgument("cpu_attention: expects q [B,T,H,D], k/v [B,T,Hkv,D], keys/values [B,S,Hkv,D]");
  const int64_t B = qd[0], T_ = qd[1], H = qd[2], D = qd[3], S = cd[1], Hkv = cd[2];
  E* kc = reinterpret_cast<E*>(keys_out->untyped_data());
  E* vc = reinterpret_cast<E*>(values_out->untyped_data());
  const int64_t cache_elems = B * S * Hkv * D, row = Hkv * D;
  if ((void*)kc != keys.untyped_data()) std::memcpy(kc, keys.untyped_data(), cache_elems * sizeof(E));
  if ((void*)vc != values.untyped_data()) std::memcpy(vc, values.untyped_data(), cache_elems * sizeof(E));
  const int32_t* sl = slots.typed_data();
  const E* kn = reinterpret_cast<const E*>(k.untyped_data());
  const E* vn = reinterpret_cast<const E*>(v.untyped_data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t slot = sl[b * T_ + t];
      if (slot < 0 || slot >= S) continue;  // past the cache: dropped, like kv_cache.scatter_rows
      std::memcpy(kc + (b * S + slot) * row, kn + (b * T_ + t) * row, row * sizeof(E));
      std::memcpy(vc + (b * S + slot) * row, vn + (b * T_ + t) * row, row * sizeof(E));
    }
  auto w = std::make_shared<AttnWork<E>>();
  w->q = reinterpret_cast<const E*>(q.untyped_data());
  w->keys = kc;
  w->values = vc;
  w->slots = sl;
  w->mask = mask.typed_data();
  w->out = reinterpret_cast<E*>(out->untyped_data());
  w->b = B; w->t = T_; w->h = H; w->hkv = Hkv; w->s = S; w->d = D;
  const int64_t items = B * T_ * Hkv;
  int64_t helpers = 0;
  if (B * T_ * H * S * D >= (int64_t(1) << 18)) {  // small work: one thread beats waking the pool
    helpers = pool.num_threads() - 1;
    if (helpers > items - 1) helpers = items - 1;
  }
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([w, items] { attend_drain(*w, items); });
  attend_drain(*w, items);
  while (w->done.load(std::memory_order_acquire) < items) _mm_pause();
  return ffi::Error::Success();
}

// out[i, :] = table[clamp(ids[i]), :] for a bf16 table [V, D]: the token embedding's gather.
// XLA:CPU runs a bf16 gather in fp32 and converts the whole table for it (113 MB for a 49k x 576
// embedding), once per decode call; this copies the D * 2 bytes of each row.
ffi::Error Rows(ffi::Buffer<ffi::BF16> table, ffi::Buffer<ffi::S32> ids, ffi::ResultBuffer<ffi::BF16> out) {
  const auto td = table.dimensions();
  if (td.size() != 2 || ids.dimensions().size() != 1 || td[0] < 1)
    return ffi::Error::InvalidArgument("cpu_gemv rows: expects table [V, D] and ids [N]");
  const int64_t v = td[0], d = td[1], n = ids.dimensions()[0];
  const auto* src = reinterpret_cast<const uint16_t*>(table.untyped_data());
  auto* dst = reinterpret_cast<uint16_t*>(out->untyped_data());
  const int32_t* id = ids.typed_data();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t r = std::min<int64_t>(std::max<int64_t>(id[i], 0), v - 1);
    std::memcpy(dst + i * d, src + r * d, d * sizeof(uint16_t));
  }
  return ffi::Error::Success();
}

}  // namespace

#define ATTENTION_HANDLER(NAME, T)                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, Attend<T>,        \
                                ffi::Ffi::Bind()        \
                                    .Ctx<ffi::ThreadPool>() \
                                    .Arg<ffi::Buffer<T>>()  \
                                    .Arg<ffi::Buffer<T>>()  \
                                    .Arg<ffi::Buffer<T>>()  \
                                    .Arg<ffi::Buffer<T>>()  \
                                    .Arg<ffi::Buffer<T>>()  \
                                    .Arg<ffi::Buffer<ffi::S32>>() \
                                    .Arg<ffi::Buffer<ffi::PRED>>() \
                                    .Ret<ffi::Buffer<T>>()  \
                                    .Ret<ffi::Buffer<T>>()  \
                                    .Ret<ffi::Buffer<T>>());

#define GEMV_HANDLER(NAME, T)                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, Gemv<T>,         \
                                ffi::Ffi::Bind()       \
                                    .Ctx<ffi::ThreadPool>() \
                                    .Arg<ffi::Buffer<T>>()  \
                                    .Arg<ffi::Buffer<T>>()  \
                                    .Ret<ffi::Buffer<ffi::F32>>());

ATTENTION_HANDLER(specdistill_cpu_attention_bf16, ffi::DataType::BF16)
ATTENTION_HANDLER(specdistill_cpu_attention_f32, ffi::DataType::F32)
GEMV_HANDLER(specdistill_cpu_gemv_bf16, ffi::DataType::BF16)
GEMV_HANDLER(specdistill_cpu_gemv_f32, ffi::DataType::F32)

XLA_FFI_DEFINE_HANDLER_SYMBOL(specdistill_cpu_rows_bf16, Rows,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>());
