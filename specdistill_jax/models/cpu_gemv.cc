// bf16 small-M matmul for B=1 decoding on CPUs with AVX512-BF16 (models/cpu_gemv.py builds it).
//
// y[M, N] (fp32) = x[M, K] (bf16) . w[N, K]^T (bf16), fp32 accumulation, M in 1..16: the
// weights-left dot of the fused decode layout (layers.mm_left). Each weight row is read once
// and multiplied with every token row (vdpbf16ps: 32 products per instruction); rows of w are
// split in chunks that the calling thread and XLA's intra-op pool threads take from one atomic
// counter, so a pool thread that starts late finds nothing left and no thread ever waits for
// work that has not been claimed (no deadlock when the pool is busy).
#include <immintrin.h>

#include <atomic>
#include <cstdint>
#include <memory>

#include "xla/ffi/api/ffi.h"

#if !defined(__AVX512BF16__)
#error "cpu_gemv needs AVX512-BF16 (cpu_gemv.py builds it only where /proc/cpuinfo has avx512_bf16)"
#endif

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kChunk = 32;  // rows of w per unit of work

struct Work {
  const uint16_t* x;
  const uint16_t* w;
  float* y;
  int64_t m, n, k, chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// R rows of w starting at r0 against all M token rows.
template <int M, int R>
inline void rows(const Work& s, int64_t r0) {
  const int64_t K = s.k;
  __m512 acc[R][M];
  _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 mask = K - k >= 32 ? ~__mmask32(0) : __mmask32((1u << (K - k)) - 1);
    __m512bh xv[M];
    _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m)
      xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(mask, s.x + m * K + k);
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, s.w + (r0 + r) * K + k);
      _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
    }
  }
  _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 16") for (int m = 0; m < M; ++m) s.y[m * s.n + r0 + r] = _mm512_reduce_add_ps(acc[r][m]);
}

template <int M>
void chunk(const Work& s, int64_t lo, int64_t hi) {
  constexpr int R = M <= 2 ? 4 : 1;  // several weight rows in flight where few token rows leave registers free
  int64_t r = lo;
  for (; r + R <= hi; r += R) rows<M, R>(s, r);
  for (; r < hi; ++r) rows<M, 1>(s, r);
}

using ChunkFn = void (*)(const Work&, int64_t, int64_t);
constexpr ChunkFn kByM[] = {nullptr, &chunk<1>, &chunk<2>, &chunk<3>, &chunk<4>, &chunk<5>, &chunk<6>,
                            &chunk<7>, &chunk<8>, &chunk<9>, &chunk<10>, &chunk<11>, &chunk<12>,
                            &chunk<13>, &chunk<14>, &chunk<15>, &chunk<16>};

void drain(Work& s) {
  const ChunkFn f = kByM[s.m];
  for (;;) {
    const int64_t c = s.next.fetch_add(1, std::memory_order_relaxed);
    if (c >= s.chunks) return;
    const int64_t lo = c * kChunk;
    f(s, lo, lo + kChunk < s.n ? lo + kChunk : s.n);
    s.done.fetch_add(1, std::memory_order_release);
  }
}

ffi::Error Gemv(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2 || xd[1] != wd[1] || xd[0] < 1 || xd[0] > 16)
    return ffi::Error::InvalidArgument("cpu_gemv: expects x [M, K] with 1 <= M <= 16 and w [N, K]");
  auto s = std::make_shared<Work>();  // shared: a pool task may start after this call returned
  s->x = reinterpret_cast<const uint16_t*>(x.typed_data());
  s->w = reinterpret_cast<const uint16_t*>(w.typed_data());
  s->y = y->typed_data();
  s->m = xd[0];
  s->n = wd[0];
  s->k = wd[1];
  s->chunks = (s->n + kChunk - 1) / kChunk;
  int64_t helpers = pool.num_threads() - 1;
  if (helpers > s->chunks - 1) helpers = s->chunks - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([s] { drain(*s); });
  drain(*s);
  // every unfinished chunk is held by a running thread: wait for those only
  while (s->done.load(std::memory_order_acquire) < s->chunks) _mm_pause();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(specdistill_cpu_gemv_bf16, Gemv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
