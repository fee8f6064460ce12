// bf16 small-M matmul for B=1 decoding on CPUs with AVX512-BF16 (models/cpu_gemv.py builds it).
//
// y[M, N] (fp32) = x[M, K] . w[N, K]^T, bf16 (fp32 accumulation) or fp32, M in 1..4096: the
// weights-left dot of the kernel decode layout (layers.mm_left), w packed by cpu_gemv.pack as
// [N / NB, K / 2, NB, 2] with NB = 64, 32 or 16 output rows per block (the largest that divides
// N): a block's K pairs follow each other, each pair holding the block's rows side by side. A
// core reads a block as one sequential stream (the hardware prefetcher follows it at the full
// read bandwidth); each vector of w holds 16 outputs x 2 inputs (one vdpbf16ps against the
// token's input pair broadcast), so the sums sit in the lanes of MR x NB / 16 accumulators, with
// no horizontal reduction, and MR token rows share each load of w. Each output's sum runs over
// the K pairs in order (fp32: two lanes, even and odd inputs, added at the end) whatever M and
// the grouping of token rows are: a k-token pass gives the one-token pass's numbers. Against the
// previous layout (4 rows interleaved in pieces of 32, one horizontal add per output and token)
// this ran 1.3-1.9x faster at M = 5..16 and no slower at M = 1 (/tmp microbenchmark, AMD EPYC,
// one core, the real target's shapes). Blocks are split in chunks that the calling thread and
// XLA's intra-op pool threads take from one atomic counter, so a pool thread that starts late
// finds nothing left and no thread ever waits for work that has not been claimed (no deadlock
// when the pool is busy). A prefill's many rows run here too: a block is read from memory once and
// each further group of rows re-reads it from L2 (the real target's prefill of 64 / 128 tokens:
// 65 / 123 ms against XLA's bf16 dot's 110 / 164 ms, /tmp measurement on this CPU).
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>
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

constexpr int64_t kChunksPerThread = 4;  // units of work per thread (a late thread still gets some)
constexpr int64_t kMinChunkRows = 64;  // output rows per unit of work, at least

template <typename E>
struct Work {
  const E* x;
  const E* w;
  float* y;
  int64_t m, n, k, nb, chunks, chunk;  // nb: rows per block; chunk: blocks per unit of work
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// One K pair of a block: NV vectors of 16 outputs x 2 inputs (bf16: one register each, fp32: two)
// times one token row's input pair broadcast to every lane.
struct Bf16Pair {
  static constexpr int kRegs = 1;  // registers per 16 outputs
  using Acc = __m512;
  static __m512bh broadcast(const uint16_t* x) { return (__m512bh)_mm512_set1_epi32(*(const int32_t*)x); }
  static void fma(__m512* acc, const uint16_t* w, __m512bh x) {
    acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_loadu_si512(w), x);
  }
  static void store(const __m512* acc, float* y) { _mm512_storeu_ps(y, acc[0]); }
};
struct F32Pair {
  static constexpr int kRegs = 2;  // outputs 0-7 and 8-15, each lane pair (even input, odd input)
  static __m512 broadcast(const float* x) { return _mm512_castpd_ps(_mm512_set1_pd(*(const double*)x)); }
  static void fma(__m512* acc, const float* w, __m512 x) {
    acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(w), x, acc[0]);
    acc[1] = _mm512_fmadd_ps(_mm512_loadu_ps(w + 16), x, acc[1]);
  }
  static void store(const __m512* acc, float* y) {  // even lanes + odd lanes, in output order
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_permutex2var_ps(acc[0], even, acc[1]),
                                      _mm512_permutex2var_ps(acc[0], odd, acc[1])));
  }
};
template <typename E>
using Pair = std::conditional_t<std::is_same_v<E, float>, F32Pair, Bf16Pair>;

// Token rows a group takes: the accumulators (MR x NV x kRegs) and one block pair's weights fit
// the 32 vector registers.
template <typename E, int NV>
constexpr int kMaxGroup = std::min(6, (30 - NV * Pair<E>::kRegs) / (NV * Pair<E>::kRegs));

// Block b (NV x 16 rows) against token rows m0 .. m0 + MR - 1.
template <int NV, int MR, typename E>
inline void block(const Work<E>& s, int64_t b, int64_t m0) {
  using P = Pair<E>;
  constexpr int R = P::kRegs;
  const E* wb = s.w + b * NV * 16 * s.k;
  __m512 acc[MR][NV * R];
  _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m)
    _Pragma("GCC unroll 8") for (int v = 0; v < NV * R; ++v) acc[m][v] = _mm512_setzero_ps();
  const E* xr = s.x + m0 * s.k;
  for (int64_t p = 0; p < s.k; p += 2) {
    const E* wp = wb + p * NV * 16;
    _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m) {
      const auto xb = P::broadcast(xr + m * s.k + p);
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) P::fma(&acc[m][v * R], wp + v * 32, xb);
    }
  }
  _Pragma("GCC unroll 8") for (int m = 0; m < MR; ++m)
    _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v)
      P::store(&acc[m][v * R], s.y + (m0 + m) * s.n + b * NV * 16 + v * 16);
}

template <int NV, typename E>
inline void group(const Work<E>& s, int64_t b, int64_t m0, int64_t rows) {
  switch (rows) {
    case 1: block<NV, 1>(s, b, m0); break;
    case 2: block<NV, 2>(s, b, m0); break;
    case 3: block<NV, std::min(3, kMaxGroup<E, NV>)>(s, b, m0); break;
    case 4: block<NV, std::min(4, kMaxGroup<E, NV>)>(s, b, m0); break;
    case 5: block<NV, std::min(5, kMaxGroup<E, NV>)>(s, b, m0); break;
    default: block<NV, std::min(6, kMaxGroup<E, NV>)>(s, b, m0); break;
  }
}

// Token rows in as few groups of at most kMaxGroup as there can be, of near-equal sizes; the next
// group re-reads the block from L1/L2.
template <int NV, typename E>
void chunk(const Work<E>& s, int64_t lo, int64_t hi) {
  constexpr int64_t most = kMaxGroup<E, NV>;
  const int64_t groups = (s.m + most - 1) / most;
  for (int64_t b = lo; b < hi; ++b)
    for (int64_t g = 0, m0 = 0; g < groups; ++g) {
      const int64_t rows = s.m / groups + (g < s.m % groups ? 1 : 0);
      group<NV>(s, b, m0, rows);
      m0 += rows;
    }
}

constexpr int64_t kMaxM = 4096;  // token rows per call (cpu_gemv.MAX_ROWS)

template <typename E>
void drain(Work<E>& s) {
  const int64_t blocks = s.n / s.nb;
  for (;;) {
    const int64_t c = s.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= s.chunks) return;
    const int64_t lo = c * s.chunk, hi = lo + s.chunk < blocks ? lo + s.chunk : blocks;
    switch (s.nb) {
      case 64: chunk<4>(s, lo, hi); break;
      case 32: chunk<2>(s, lo, hi); break;
      default: chunk<1>(s, lo, hi); break;
    }
    s.done.fetch_add(1, std::memory_order_release);
  }
}

template <ffi::DataType T>
using Elem = std::conditional_t<T == ffi::DataType::F32, float, uint16_t>;

template <ffi::DataType T>
ffi::Error Gemv(ffi::ThreadPool pool, ffi::Buffer<T> x, ffi::Buffer<T> w, ffi::ResultBuffer<ffi::F32> y) {
  using E = Elem<T>;
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 4 || wd[3] != 2 || (wd[2] != 16 && wd[2] != 32 && wd[2] != 64) ||
      xd[1] != wd[1] * 2 || xd[0] < 1 || xd[0] > kMaxM)
    return ffi::Error::InvalidArgument(
        "cpu_gemv: expects x [M, K] with 1 <= M <= 4096 and w packed [N / NB, K / 2, NB, 2], NB in 16, 32, 64 "
        "(cpu_gemv.pack)");
  auto s = std::make_shared<Work<E>>();  // shared: a pool task may start after this call returned
  s->x = reinterpret_cast<const E*>(x.untyped_data());
  s->w = reinterpret_cast<const E*>(w.untyped_data());
  s->y = y->typed_data();
  s->m = xd[0];
  s->nb = wd[2];
  s->n = wd[0] * wd[2];
  s->k = xd[1];
  // few large contiguous chunks: each stays one sequential stream for the prefetcher
  const int64_t threads = pool.num_threads() > 0 ? pool.num_threads() : 1;
  const int64_t blocks = wd[0], least = std::max<int64_t>(1, kMinChunkRows / s->nb);
  s->chunk = std::max((blocks + kChunksPerThread * threads - 1) / (kChunksPerThread * threads), least);
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
// Cached attention of a few new tokens (decode / verification), with the rotary embedding and
// the cache write fused in.
//
// The layer's projected heads qkv [B, T, H + 2 Hkv, D] come in before the rotary embedding: q and
// k are rotated by the tables cos/sin [B, T, D] (fp32, rope.apply_rotary's arithmetic, rounded to
// the cache's dtype: four XLA fusions per layer fewer, ~8% of a 16-token pass); keys/values
// [B, S, Hkv, D] (bf16 or fp32) get k/v at slots [B, T] (slots >= S dropped), then every query (b, t, head) attends over the slots s < max_t slots[b, t] + 1 that
// mask[b, t, s] allows: scores = q . key (bf16 products, fp32 sums) * D^-1/2, an fp32 softmax,
// out = sum_s p_s value_s in fp32, rounded to bf16. Each query is computed by the same
// instructions whatever T is (a k-token verification gives the one-token step's numbers) and
// reads only the filled prefix of the cache.
//
// Scores and values as small matrix products. A work item is (row b, kv head, a chunk of the new
// tokens): its query rows (the chunk's tokens x the kv head's group of query heads) against the
// slots the row filled. The item's keys are transposed once into tiles of 16 slots x the head's
// input pairs (bf16: a 32-bit pair per lane, fp32: one element per lane), so that one vdpbf16ps
// (fp32: one FMA) adds a pair's products for 16 slots against the query's pair broadcast, and up
// to kRowBlock query rows share each load of a tile: no horizontal sums. The softmax's exp runs
// on 16 lanes (exp16); out = sum_s p_s value_s runs per 16-element piece of the head with the
// value piece loaded once for the block's rows. A slot's score sums the head's pairs in order in
// its lane and an output sums the slots in order, so every query gets the same numbers whatever
// T, the chunking or the rows beside it are. Against the previous kernel (one query per item,
// 16 slots' partial sums reduced by a transposing tree, values converted per query token), the
// attention of the real target's 16-token pass (30 layers, 128 of 512 slots filled) took 2.3-2.6
// instead of 3.9 ms in jax.profiler traces, and the whole pass 18.4-19.3 instead of 20.8-24.2 ms
// (9 tokens: 13.4-13.8 instead of 14.3-16.4) in alternating processes (this CPU, 2 threads). The
// keys are transposed by 16 x 16 register transposes (vpgatherdd was 70% of an item here).
constexpr int64_t kMaxHeadDim = 256;  // cpu_gemv.MAX_HEAD_DIM

inline __m512 load16(const uint16_t* p, __mmask16 live = 0xffff) {  // bf16 -> fp32 (exact); dead lanes 0
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(live, p)), 16));
}
inline __m512 load16(const float* p, __mmask16 live = 0xffff) { return _mm512_maskz_loadu_ps(live, p); }

inline __mmask16 lanes16(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// exp of the live lanes (0 elsewhere) for x <= 0 (scores minus their maximum): Cody-Waite
// reduction by ln 2 and cephes' degree-6 polynomial for expf (~1 ulp), scaled by 2^n.
inline __m512 exp16(__m512 x, __mmask16 live) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));  // below: 0 after scaling
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (float coef : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(coef));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// 16 fp32 lanes stored where `live`, as bf16 rounded to nearest even (NaN stays NaN, as XLA's
// convert) or as fp32.
inline void store16(uint16_t* p, __m512 f, __mmask16 live = 0xffff) {
  const __m512i bits = _mm512_castps_si512(f);
  __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                      _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1))));
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
  _mm256_mask_storeu_epi16(p, live, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
}
inline void store16(float* p, __m512 f, __mmask16 live = 0xffff) { _mm512_mask_storeu_ps(p, live, f); }

// x [d] rotated by the tables [d] (rope.apply_rotary: x cos + [-x2, x1] sin in fp32, rounded to E).
template <typename E>
inline void rotate(const E* x, const float* cos, const float* sin, int64_t d, E* out) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; i += 16) {
    const __mmask16 live = lanes16(half - i);
    const __m512 x1 = load16(x + i, live), x2 = load16(x + half + i, live);
    store16(out + i, _mm512_add_ps(_mm512_mul_ps(x1, load16(cos + i, live)),
                                   _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), x2), load16(sin + i, live))), live);
    store16(out + half + i, _mm512_add_ps(_mm512_mul_ps(x2, load16(cos + half + i, live)),
                                          _mm512_mul_ps(x1, load16(sin + half + i, live))), live);
  }
}

template <typename E>
struct AttnWork {
  const E *q, *keys, *values;
  const int32_t* slots;
  const bool* mask;
  E* out;
  int64_t b, t, h, hkv, s, d, chunks, tc;  // chunks of tc tokens per (row, kv head)
  std::vector<E> rotated;  // the queries after the rotary embedding, [B, T, H, D]
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

constexpr int kRowBlock = 8;  // query rows sharing each load of a key tile or a value piece

// One 32-bit unit of a key (bf16: an input pair, fp32: an element) for 16 slots, times the query's
// unit broadcast, added to the slots' scores.
inline __m512 dot_unit(__m512 acc, __m512i keys, const uint16_t* q) {
  return _mm512_dpbf16_ps(acc, (__m512bh)keys, (__m512bh)_mm512_set1_epi32(*(const int32_t*)q));
}
inline __m512 dot_unit(__m512 acc, __m512i keys, const float* q) {
  return _mm512_fmadd_ps(_mm512_castsi512_ps(keys), _mm512_set1_ps(*q), acc);
}

// Scores (scaled, -inf where hidden) of R query rows against every tile; each row's maximum.
template <int R, typename E>
void score_rows(const E* const* q, const __m512i* keyt, const __mmask16* live, int64_t tiles, int64_t units,
                __m512 scale, float* probs, float* most) {
  constexpr int kPer = std::is_same_v<E, float> ? 1 : 2;  // elements per unit
  __m512 top[R];
  for (int r = 0; r < R; ++r) top[r] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t tile = 0; tile < tiles; ++tile) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    const __m512i* kt = keyt + tile * units;
    for (int64_t u = 0; u < units; ++u) {
      const __m512i k = _mm512_load_si512(kt + u);
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r] = dot_unit(acc[r], k, q[r] + u * kPer);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 sc = _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()),
                                           live[r * tiles + tile], _mm512_mul_ps(acc[r], scale));
      _mm512_storeu_ps(probs + (r * tiles + tile) * 16, sc);
      top[r] = _mm512_max_ps(top[r], sc);
    }
  }
  for (int r = 0; r < R; ++r) most[r] = _mm512_reduce_max_ps(top[r]);
}

// out[r] = inv[r] * sum_s p[r][s] value_s for R rows, one 16-element piece of the head at a time.
template <int R, typename E>
void weigh_values(const float* const* p, const float* inv, const E* vbase, int64_t stride, int64_t used,
                  int64_t d, E* const* out) {
  for (int64_t c = 0; c < d; c += 16) {
    const __mmask16 lanes = lanes16(d - c);
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t s = 0; s < used; ++s) {
      const __m512 v = load16(vbase + s * stride + c, lanes);
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(p[r][s]), v, acc[r]);
    }
    for (int r = 0; r < R; ++r) store16(out[r] + c, _mm512_mul_ps(acc[r], _mm512_set1_ps(inv[r])), lanes);
  }
}

template <typename E, int... I>
constexpr auto row_blocks(std::integer_sequence<int, I...>) {
  struct Fns {
    std::array<decltype(&score_rows<1, E>), sizeof...(I)> score{&score_rows<I + 1, E>...};
    std::array<decltype(&weigh_values<1, E>), sizeof...(I)> weigh{&weigh_values<I + 1, E>...};
  };
  return Fns{};
}

// 16 rows of 16 32-bit lanes -> out[c] = column c (lane j: row j's element c).
inline void transpose16(const __m512i* r, __m512i* out) {
  __m512i a[16], b[16];
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    b[4 * i + 0] = _mm512_unpacklo_epi64(a[4 * i + 0], a[4 * i + 2]);
    b[4 * i + 1] = _mm512_unpackhi_epi64(a[4 * i + 0], a[4 * i + 2]);
    b[4 * i + 2] = _mm512_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm512_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      a[8 * i + j] = _mm512_shuffle_i32x4(b[8 * i + j], b[8 * i + 4 + j], 0x88);
      a[8 * i + 4 + j] = _mm512_shuffle_i32x4(b[8 * i + j], b[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    out[j] = _mm512_shuffle_i32x4(a[j], a[8 + j], 0x88);
    out[8 + j] = _mm512_shuffle_i32x4(a[j], a[8 + j], 0xdd);
  }
}

// One work item (b, kv head, chunk of tokens): its query rows against the slots row b filled.
template <typename E>
void attend_item(const AttnWork<E>& w, int64_t item) {
  static constexpr auto kBlocks = row_blocks<E>(std::make_integer_sequence<int, kRowBlock>{});
  const int64_t kh = item % w.hkv, chunk = (item / w.hkv) % w.chunks, b = item / (w.hkv * w.chunks);
  const int64_t t0 = chunk * w.tc, t1 = std::min(w.t, t0 + w.tc);
  if (t0 >= t1) return;
  int64_t used = 0;
  for (int64_t j = 0; j < w.t; ++j) used = std::max<int64_t>(used, w.slots[b * w.t + j] + 1);
  used = std::min(used, w.s);
  const int64_t group = w.h / w.hkv, d = w.d, rows = (t1 - t0) * group, tiles = (used + 15) / 16;
  const int64_t units = d * int64_t(sizeof(E)) / 4, stride = w.hkv * d;
  // per-thread scratch, grown once: no allocation per layer and token
  thread_local std::vector<__m512i> keyt;
  thread_local std::vector<float> probs;
  thread_local std::vector<__mmask16> live;
  thread_local std::vector<float> packed;  // a row's visible exps at consecutive ranks (the denominator)
  keyt.resize(tiles * units);
  packed.resize(tiles * 16 + 16);
  probs.resize(rows * tiles * 16 + 16);
  live.resize(rows * tiles + 1);
  const E* kbase = w.keys + (b * w.s * w.hkv + kh) * d;
  const E* vbase = w.values + (b * w.s * w.hkv + kh) * d;
  const int64_t stride_units = stride * int64_t(sizeof(E)) / 4;
  for (int64_t tile = 0; tile < tiles; ++tile) {  // keys -> [tile][unit][16 slots]; unfilled slots 0
    const int32_t* base = reinterpret_cast<const int32_t*>(kbase + tile * 16 * stride);
    const int64_t filled = std::min<int64_t>(16, used - tile * 16);
    for (int64_t c = 0; c < units; c += 16) {
      const __mmask16 cols = lanes16(units - c);
      __m512i rows16[16], t[16];
      for (int64_t j = 0; j < 16; ++j)
        rows16[j] = j < filled ? _mm512_maskz_loadu_epi32(cols, base + j * stride_units + c) : _mm512_setzero_si512();
      transpose16(rows16, t);
      for (int64_t j = 0; j < 16 && c + j < units; ++j) keyt[tile * units + c + j] = t[j];
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const bool* mrow = w.mask + (b * w.t + t0 + r / group) * w.s;
    for (int64_t tile = 0; tile < tiles; ++tile)
      live[r * tiles + tile] = _mm_test_epi8_mask(_mm_maskz_loadu_epi8(lanes16(used - tile * 16), mrow + tile * 16),
                                                  _mm_set1_epi8(1));
  }
  const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(float(d)));
  float most[kRowBlock], inv[kRowBlock];
  const E* q[kRowBlock];
  float* p[kRowBlock];  // the rows' scores, then their exp
  E* out[kRowBlock];
  for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
    const int64_t n = std::min<int64_t>(kRowBlock, rows - r0);
    for (int64_t r = 0; r < n; ++r) {  // row r0 + r: token t0 + (r0 + r) / group, head kh * group + (r0 + r) % group
      const int64_t head = (b * w.t + t0 + (r0 + r) / group) * w.h + kh * group + (r0 + r) % group;
      q[r] = w.q + head * d;
      out[r] = w.out + head * d;
      p[r] = probs.data() + (r0 + r) * tiles * 16;
    }
    kBlocks.score[n - 1](q, keyt.data(), live.data() + r0 * tiles, tiles, units, scale, probs.data() + r0 * tiles * 16, most);
    for (int64_t r = 0; r < n; ++r) {
      inv[r] = 0.f;  // no visible slot: out = 0 (every p is 0 below)
      float* pr = p[r];
      const __mmask16* lv = live.data() + (r0 + r) * tiles;
      const bool any = most[r] > -std::numeric_limits<float>::infinity();
      // The denominator: the i-th visible slot's exp goes to lane i % 16, added in slot order, so
      // the sum depends only on the visible slots, not on where hidden ones sit between them. A tree
      // node whose ancestors are not adjacent in the cache then gets the denominator of the same
      // tokens laid out contiguously (its path as a chain, or one-token steps) bit for bit.
      // Summing by slot lane instead made a depth-2 node differ from greedy AR in the last bits
      // (1 of 40 MT-Bench prompts flipped a near-tie). Whole visible tiles at the start are added
      // as they are (there, visible rank == slot); from the first tile with a hidden slot on, the
      // visible exps are packed to consecutive ranks first.
      __m512 sum = _mm512_setzero_ps();
      int64_t count = 0;
      bool dense = true;  // every slot so far visible
      for (int64_t tile = 0; tile < tiles; ++tile) {
        const __m512 e = any ? exp16(_mm512_sub_ps(_mm512_loadu_ps(pr + tile * 16), _mm512_set1_ps(most[r])), lv[tile])
                             : _mm512_setzero_ps();
        _mm512_storeu_ps(pr + tile * 16, e);
        dense = dense && lv[tile] == 0xffff;
        if (dense) {
          sum = _mm512_add_ps(sum, e);
        } else {
          _mm512_mask_compressstoreu_ps(packed.data() + count, lv[tile], e);
          count += _mm_popcnt_u32(lv[tile]);
        }
      }
      for (int64_t i = 0; i < count; i += 16)
        sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(lanes16(count - i), packed.data() + i));
      if (any) inv[r] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    // a hidden slot's p is 0 and adds 0 (values are finite)
    kBlocks.weigh[n - 1](p, inv, vbase, stride, used, d, out);
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
ffi::Error Attend(ffi::ThreadPool pool, ffi::Buffer<T> qkv, ffi::Buffer<ffi::F32> cos, ffi::Buffer<ffi::F32> sin,
                  ffi::Buffer<T> keys, ffi::Buffer<T> values, ffi::Buffer<ffi::S32> slots, ffi::Buffer<ffi::PRED> mask,
                  ffi::ResultBuffer<T> out, ffi::ResultBuffer<T> keys_out, ffi::ResultBuffer<T> values_out) {
  using E = Elem<T>;
  const auto xd = qkv.dimensions(), cd = keys.dimensions(), od = out->dimensions(), rd = cos.dimensions();
  if (xd.size() != 4 || cd.size() != 4 || od.size() != 4 || rd.size() != 3 || cd[0] != xd[0] || od[0] != xd[0] ||
      od[1] != xd[1] || xd[2] != od[2] + 2 * cd[2] || od[2] % cd[2] != 0 || cd[3] != xd[3] || od[3] != xd[3] ||
      rd[0] != xd[0] || rd[1] != xd[1] || rd[2] != xd[3] || xd[3] % 2 != 0 || xd[3] > kMaxHeadDim)
    return ffi::Error::InvalidArgument(
        "cpu_attention: expects qkv [B,T,H+2Hkv,D], cos/sin [B,T,D], keys/values [B,S,Hkv,D], out [B,T,H,D], "
        "D even and <= 256");
  const int64_t B = xd[0], T_ = xd[1], H = od[2], D = xd[3], S = cd[1], Hkv = cd[2], heads = xd[2];
  E* kc = reinterpret_cast<E*>(keys_out->untyped_data());
  E* vc = reinterpret_cast<E*>(values_out->untyped_data());
  const int64_t cache_elems = B * S * Hkv * D, row = Hkv * D;
  if ((void*)kc != keys.untyped_data()) std::memcpy(kc, keys.untyped_data(), cache_elems * sizeof(E));
  if ((void*)vc != values.untyped_data()) std::memcpy(vc, values.untyped_data(), cache_elems * sizeof(E));
  const int32_t* sl = slots.typed_data();
  const E* x = reinterpret_cast<const E*>(qkv.untyped_data());
  auto w = std::make_shared<AttnWork<E>>();
  w->rotated.resize(B * T_ * H * D);
  // rotary embedding of the queries (to scratch) and keys (into the cache); values copied
  for (int64_t bt = 0; bt < B * T_; ++bt) {
    const float* c = cos.typed_data() + bt * D;
    const float* sn = sin.typed_data() + bt * D;
    const E* xr = x + bt * heads * D;
    for (int64_t h = 0; h < H; ++h) rotate(xr + h * D, c, sn, D, w->rotated.data() + (bt * H + h) * D);
    const int64_t slot = sl[bt], b = bt / T_;
    if (slot < 0 || slot >= S) continue;  // past the cache: dropped, like kv_cache.scatter_rows
    for (int64_t h = 0; h < Hkv; ++h) rotate(xr + (H + h) * D, c, sn, D, kc + (b * S + slot) * row + h * D);
    std::memcpy(vc + (b * S + slot) * row, xr + (H + Hkv) * D, row * sizeof(E));
  }
  w->q = w->rotated.data();
  w->keys = kc;
  w->values = vc;
  w->slots = sl;
  w->mask = mask.typed_data();
  w->out = reinterpret_cast<E*>(out->untyped_data());
  w->b = B; w->t = T_; w->h = H; w->hkv = Hkv; w->s = S; w->d = D;
  w->chunks = 1;
  int64_t helpers = 0;
  if (B * T_ * H * S * D >= (int64_t(1) << 18)) {  // small work: one thread beats waking the pool
    helpers = pool.num_threads() - 1;
    const int64_t want = 2 * (helpers + 1);  // items: two per thread, where there are tokens for them
    w->chunks = std::min<int64_t>(T_, std::max<int64_t>(1, (want + B * Hkv - 1) / (B * Hkv)));
  }
  w->tc = (T_ + w->chunks - 1) / w->chunks;
  const int64_t items = B * Hkv * w->chunks;
  if (helpers > items - 1) helpers = items - 1;
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
                                    .Arg<ffi::Buffer<ffi::F32>>()  \
                                    .Arg<ffi::Buffer<ffi::F32>>()  \
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
