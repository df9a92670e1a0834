// Host harness for csrc/pixel_shuffle3d/pixel_shuffle3d.cu: runs the CUDA kernel's
// per-thread work (shuffle_rows, a __host__ __device__ function) on the CPU for
// every thread of a simulated grid, so the kernel's index arithmetic, vector
// stores and int32/int64 paths are tested on machines without a GPU.
//
// Usage: harness ELEMENT_SIZE SHUFFLE R V INDEX_BITS BLOCKS s0..s4 t0..t4
// (sizes s and element strides t of x). Reads the words of x's storage span from
// stdin, writes the contiguous output's words to stdout.
#include "pixel_shuffle3d/pixel_shuffle3d.cu"

#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace brainkern;

namespace {

template <typename Word, typename I, int V>
int run(bool shuffle, int64_t r, int64_t blocks, const int64_t* sizes, const int64_t* strides) {
  int64_t span = 1, numel = 1;
  for (int d = 0; d < 5; ++d) {
    span += (sizes[d] - 1) * strides[d];
    numel *= sizes[d];
  }
  std::vector<Word> x(span);
  if (std::fread(x.data(), sizeof(Word), span, stdin) != static_cast<size_t>(span)) return 3;
  // 16-byte aligned output, as cudaMalloc gives.
  std::vector<Pack<Word, 16 / sizeof(Word)>> storage((numel * sizeof(Word) + 15) / 16);
  Word* y = reinterpret_cast<Word*>(storage.data());
  const Params<I> p = make_params<I>(shuffle, r, sizes, strides);
  if (p.row_len % V != 0) return 4;
  const int64_t vectors = (static_cast<int64_t>(p.row_len) + V - 1) / V;
  const int64_t lanes = next_pow2(vectors), rows_per_block = kThreads / lanes;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t ty = 0; ty < rows_per_block; ++ty)
      for (int64_t tx = 0; tx < lanes; ++tx) {
        const int64_t row0 = b * rows_per_block + ty, step = blocks * rows_per_block;
        if (!shuffle)
          shuffle_rows<Word, I, V, 1, false>(x.data(), y, p, row0, step, I(tx), I(lanes));
        else if (r == 2)
          shuffle_rows<Word, I, V, 2, true>(x.data(), y, p, row0, step, I(tx), I(lanes));
        else
          shuffle_rows<Word, I, V, 0, true>(x.data(), y, p, row0, step, I(tx), I(lanes));
      }
  std::fwrite(y, sizeof(Word), numel, stdout);
  return 0;
}

template <typename Word, typename I>
int run_v(int v, bool shuffle, int64_t r, int64_t blocks, const int64_t* s, const int64_t* t) {
  switch (v) {
    case 1: return run<Word, I, 1>(shuffle, r, blocks, s, t);
    case 2: return run<Word, I, 2>(shuffle, r, blocks, s, t);
    case 4: return (16 / sizeof(Word) >= 4) ? run<Word, I, 4>(shuffle, r, blocks, s, t) : 5;
    case 8: return (16 / sizeof(Word) >= 8) ? run<Word, I, 8>(shuffle, r, blocks, s, t) : 5;
    default: return 5;
  }
}

template <typename Word>
int run_i(int bits, int v, bool shuffle, int64_t r, int64_t blocks, const int64_t* s, const int64_t* t) {
  return bits == 32 ? run_v<Word, uint32_t>(v, shuffle, r, blocks, s, t)
                    : run_v<Word, int64_t>(v, shuffle, r, blocks, s, t);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 17) return 2;
  const int element_size = std::atoi(argv[1]);
  const bool shuffle = std::atoi(argv[2]) != 0;
  const int64_t r = std::atoll(argv[3]);
  const int v = std::atoi(argv[4]), bits = std::atoi(argv[5]);
  const int64_t blocks = std::atoll(argv[6]);
  int64_t sizes[5], strides[5];
  for (int d = 0; d < 5; ++d) {
    sizes[d] = std::atoll(argv[7 + d]);
    strides[d] = std::atoll(argv[12 + d]);
  }
  switch (element_size) {
    case 2: return run_i<uint16_t>(bits, v, shuffle, r, blocks, sizes, strides);
    case 4: return run_i<uint32_t>(bits, v, shuffle, r, blocks, sizes, strides);
    case 8: return run_i<uint64_t>(bits, v, shuffle, r, blocks, sizes, strides);
    default: return 2;
  }
}
