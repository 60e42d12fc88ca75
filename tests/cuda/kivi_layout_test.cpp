// A page quantized by the CPU codec (cpu::kv_page_write, KIVI 2/4/8 bits) converted to the device layout
// (kivi_page_cpu_to_device below: the CPU page's codes, scales and mins through cpu::kivi_page_layout and
// cpu::kivi_code, then lc::kivi_page_pack) decodes, by the device layout's own addressing (kivi_layout.h, the rules
// the kernels follow), to exactly the values the CPU codec reads back. Host only: runs wherever the CPU backend
// builds, GPU or not. (The GPU tests then check the kernels' reading of that layout.)
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "backend/cpu/kv_page_codec.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kivi_layout.h"
#include "core/fp16.h"

namespace {

using namespace longctx;
namespace lc = longctx::cuda;

// The conversion a store would run when it uploads a sealed CPU page to the device.
lc::Status kivi_page_cpu_to_device(KvFormat f, int32_t pt, int32_t d, const uint8_t* cpu_page, uint8_t* dst) {
  const cpu::KiviPageLayout L = cpu::kivi_page_layout(f, pt, d);
  const int32_t n_groups = d / cpu::kKiviValueGroup;
  std::vector<uint8_t> kc(static_cast<size_t>(pt) * d), vc(kc.size());
  for (int32_t t = 0; t < pt; ++t)
    for (int32_t c = 0; c < d; ++c) {
      kc[static_cast<size_t>(t) * d + c] = static_cast<uint8_t>(
          cpu::kivi_code(cpu_page + L.k_codes + c * L.k_row_bytes, L.bits, L.k_row_bytes, static_cast<size_t>(t)));
      vc[static_cast<size_t>(t) * d + c] = static_cast<uint8_t>(
          cpu::kivi_code(cpu_page + L.v_codes + t * L.v_row_bytes, L.bits, L.v_row_bytes, static_cast<size_t>(c)));
    }
  std::vector<uint16_t> ks(static_cast<size_t>(d)), km(ks.size()), vs(static_cast<size_t>(pt) * n_groups), vm(vs.size());
  std::memcpy(ks.data(), cpu_page + L.k_scale, ks.size() * 2);
  std::memcpy(km.data(), cpu_page + L.k_min, km.size() * 2);
  std::memcpy(vs.data(), cpu_page + L.v_scale, vs.size() * 2);
  std::memcpy(vm.data(), cpu_page + L.v_min, vm.size() * 2);
  lc::KiviPageCodes codes{kc.data(), ks.data(), km.data(), vc.data(), vs.data(), vm.data()};
  const lc::KvPacking packing = f == KvFormat::Kivi2 ? lc::KvPacking::Kivi2
                                : f == KvFormat::Kivi4 ? lc::KvPacking::Kivi4
                                                       : lc::KvPacking::Kivi8;
  return lc::kivi_page_pack(packing, pt, d, codes, dst);
}

float half_of(uint32_t word, int hi) { return fp16_to_f32(static_cast<uint16_t>(word >> (16 * hi))); }

}  // namespace

int main() {
  int failures = 0;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (KvFormat f : {KvFormat::Kivi2, KvFormat::Kivi4, KvFormat::Kivi8})
    for (int32_t d : {64, 128})
      for (int32_t pt : {16, 64, 128}) {
        const int bits = kv_format_bits(f);
        std::vector<float> k(static_cast<size_t>(pt) * d), v(k.size());
        for (size_t i = 0; i < k.size(); ++i) {
          k[i] = nd(rng) * (i % d == 5 ? 10.0f : 1.0f) + (i % d == 9 ? 4.0f : 0.0f);  // outlier channels
          v[i] = nd(rng);
        }
        std::vector<uint8_t> cpu_page(cpu::kv_page_bytes(f, pt, d));
        cpu::kv_page_write(f, pt, d, k.data(), v.data(), 0, pt, cpu_page.data());
        std::vector<float> kr(k.size()), vr(v.size());
        cpu::kv_page_read_keys(f, pt, d, cpu_page.data(), 0, pt, kr.data());
        cpu::kv_page_read_values(f, pt, d, cpu_page.data(), 0, pt, vr.data());

        std::vector<uint8_t> dev(cuda::kivi::page_bytes(d, bits, pt));
        const lc::Status s = kivi_page_cpu_to_device(f, pt, d, cpu_page.data(), dev.data());
        if (!s.ok()) {
          std::printf("FAIL %s d=%d pt=%d: %s\n", kv_format_name(f), d, pt, s.message().c_str());
          ++failures;
          continue;
        }
        // Decode the device page by its layout: value = min + scale * code, as both codecs define it.
        size_t n_bad = 0;
        const auto* kb = reinterpret_cast<const uint32_t*>(dev.data());
        for (int32_t t = 0; t < pt; ++t) {
          const size_t tile = cuda::kivi::k_scale_bytes(d) + static_cast<size_t>(t / 16) * cuda::kivi::tile_bytes(d, bits);
          const auto* kcode = reinterpret_cast<const uint32_t*>(dev.data() + tile);
          const auto* vcode = reinterpret_cast<const uint32_t*>(dev.data() + tile + cuda::kivi::code_bytes(d, bits));
          const auto* vsc = reinterpret_cast<const uint32_t*>(dev.data() + tile + 2 * cuda::kivi::code_bytes(d, bits));
          for (int32_t c = 0; c < d; ++c) {
            const cuda::kivi::Slot ks = cuda::kivi::k_code_slot(d, bits, t % 16, c);
            const cuda::kivi::Slot vs = cuda::kivi::v_code_slot(d, bits, t % 16, c);
            const uint32_t mask = (1u << bits) - 1;
            const float kx = half_of(kb[cuda::kivi::k_scale_word(c, 1)], c & 1) +
                             half_of(kb[cuda::kivi::k_scale_word(c, 0)], c & 1) *
                                 static_cast<float>((kcode[ks.word] >> ks.bit) & mask);
            const uint32_t vw = vsc[(t % 16) * (d / 32) + c / 32];
            const float vx = half_of(vw, 1) + half_of(vw, 0) * static_cast<float>((vcode[vs.word] >> vs.bit) & mask);
            n_bad += kx != kr[static_cast<size_t>(t) * d + c];
            n_bad += vx != vr[static_cast<size_t>(t) * d + c];
          }
        }
        std::printf("%s %s d=%d page_tokens=%d: %zu values differ from the CPU codec's\n", n_bad ? "FAIL" : "ok  ",
                    kv_format_name(f), d, pt, n_bad);
        failures += n_bad != 0;
      }
  // The word-by-word reading of a key row (k_row_word, k_word_channel) visits every channel of the row once, at the
  // word and bit k_code_slot gives it.
  for (int bits : {2, 4, 8})
    for (int d : {64, 128}) {
      size_t n_bad = 0;
      for (int t = 0; t < 16; ++t) {
        std::vector<int> seen(static_cast<size_t>(d), 0);
        for (int c = 0; c < 4; ++c)
          for (int wi = 0; wi < cuda::kivi::code_words(d, bits); ++wi)
            for (int k = 0; k < cuda::kivi::pairs_per_word(bits); ++k)
              for (int hi = 0; hi < 2; ++hi) {
                const int ch = cuda::kivi::k_word_channel(bits, c, wi, k) + hi;
                if (ch < 0 || ch >= d) {
                  ++n_bad;
                  continue;
                }
                ++seen[static_cast<size_t>(ch)];
                const cuda::kivi::Slot sl = cuda::kivi::k_code_slot(d, bits, t, ch);
                n_bad += sl.word != cuda::kivi::k_row_word(d, bits, t, c, wi) || sl.bit != bits * k + 16 * hi;
              }
        for (int n : seen) n_bad += n != 1;
      }
      std::printf("%s key rows read word by word, %d bits, d=%d: %zu mismatches with k_code_slot\n",
                  n_bad ? "FAIL" : "ok  ", bits, d, n_bad);
      failures += n_bad != 0;
    }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}
