// End to end: the CUDA decode step of the tiny synthetic llama (2 layers, d 256, 4 q / 2 kv heads of 64, FFN 512,
// vocab 512) against an independent plain host forward built from the same seed (tests/synthetic_llama_reference.h:
// straightforward loops, double accumulation; the CPU model is checked against the same code), for a prompt fed
// token by token and then greedy continuation. Exit code 77 when no GPU is present.
//
// What the reference mirrors, and why: the device rounds to bf16 where its kernels read bf16 (the normed GEMM inputs,
// q, the stored K and V, the attention output, the SwiGLU output), so the reference rounds at the same points; what
// is left is f32 against double arithmetic and the occasional value that lands one bf16 step the other way. That
// gives a tolerance of: logits relative L2 <= 1e-2 per step and |logit - ref| <= 5e-2 (logits are of unit scale).
// The greedy token must be the reference's argmax, or within 5e-2 of its top logit (a near tie that rounding may
// flip); the reference then follows the device's token so the two stay in lockstep.
// Also: replays after reset() are bit-identical (no race, no state left behind), and the clear errors (an unknown
// shape, a full context, a device that cannot hold the store) leave the device usable.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "cuda_test_util.h"
#include "backend/cuda/llama_decode.h"
#include "backend/cuda/synthetic.h"
#include "core/fp16.h"
#include "../synthetic_llama_reference.h"

namespace {

using namespace longctx;
namespace lc = longctx::cuda;
using namespace longctx::cuda_test;

// One step's logits and greedy token against the reference's logits (the tolerances of the file comment).
struct StepCheck {
  double rel = 0, max_abs = 0;
  int32_t ref_best = -1;
  bool tie = false, ok = false;
};

StepCheck check_step(const std::vector<float>& lg, int32_t tok, const std::vector<float>& rl, int32_t n_vocab) {
  StepCheck c;
  double e2 = 0, r2 = 0;
  for (size_t i = 0; i < rl.size(); ++i) {
    const double e = i < lg.size() ? std::fabs(static_cast<double>(lg[i]) - rl[i]) : INFINITY;
    e2 += std::isfinite(e) ? e * e : 1e30;
    r2 += static_cast<double>(rl[i]) * rl[i];
    c.max_abs = std::isfinite(e) ? std::max(c.max_abs, e) : 1e30;
  }
  c.rel = std::sqrt(e2 / r2);
  c.ref_best = static_cast<int32_t>(std::max_element(rl.begin(), rl.end()) - rl.begin());
  const bool tok_ok = tok >= 0 && tok < n_vocab &&
                      (tok == c.ref_best || rl[static_cast<size_t>(tok)] >= rl[static_cast<size_t>(c.ref_best)] - 5e-2);
  c.tie = tok_ok && tok != c.ref_best;
  c.ok = c.rel <= 1e-2 && c.max_abs <= 5e-2 && tok_ok;
  return c;
}

void test_end_to_end(lc::MatvecPath path, lc::WeightPrefetch prefetch = lc::WeightPrefetch::None) {
  const std::string pname = std::string(path == lc::MatvecPath::Fused ? "fused GEMV" : "cuBLASLt") +
                            (prefetch == lc::WeightPrefetch::None ? "" : " + L2 prefetch of Wo");
  longctx::ModelShape m;
  uint64_t seed = 0;
  CHECK_OK(lc::synthetic_shape("tiny:7", &m, &seed));
  lc::LlamaDecodeOptions opt;
  opt.max_context = 64;
  opt.page_tokens = 16;  // 25 tokens cross page boundaries
  opt.matvec = path;
  opt.prefetch = prefetch;
  std::unique_ptr<lc::LlamaDecoder> dec;
  CHECK_OK(lc::LlamaDecoder::create(m, seed, opt, &dec));
  test::SyntheticLlamaReference ref(m, seed, test::RefRounding::DeviceBf16);

  const std::vector<int32_t> prompt = {3, 141, 59, 265, 35, 89, 7};
  const int32_t n_gen = 18;
  std::vector<std::vector<float>> dev_logits;
  std::vector<int32_t> dev_tokens;
  double worst_rel = 0, worst_abs = 0;
  bool ok = true;
  int32_t n_ties = 0;
  int32_t next = prompt[0];
  for (int32_t t = 0; t < static_cast<int32_t>(prompt.size()) + n_gen; ++t) {
    const bool in_prompt = t < static_cast<int32_t>(prompt.size());
    if (in_prompt) CHECK_OK(dec->set_token(prompt[static_cast<size_t>(t)]));
    const int32_t input = in_prompt ? prompt[static_cast<size_t>(t)] : next;
    CHECK_OK(dec->step(1));
    CHECK_OK(dec->synchronize());
    std::vector<float> lg;
    CHECK_OK(dec->read_logits(&lg));
    int32_t tok = -1;
    CHECK_OK(dec->read_last_token(&tok));
    dev_logits.push_back(lg);
    dev_tokens.push_back(tok);
    const std::vector<float> rl = ref.forward(input);
    const StepCheck c = check_step(lg, tok, rl, m.n_vocab);
    worst_rel = std::max(worst_rel, c.rel);
    worst_abs = std::max(worst_abs, c.max_abs);
    n_ties += c.tie;
    if (!c.ok) {
      ok = false;
      std::printf("     step %d (pos %d, input %d): rel L2 %.2e, max abs %.2e, token %d, reference argmax %d\n", t, t,
                  input, c.rel, c.max_abs, tok, c.ref_best);
    }
    next = tok;
  }
  std::vector<int32_t> history;
  CHECK_OK(dec->read_generated(&history));
  char buf[300];
  std::snprintf(buf, sizeof buf,
                "tiny llama, %s: %zu prompt + %d greedy steps vs host reference: worst logits rel L2 %.2e, max abs %.2e, "
                "%d near-tie token(s)",
                pname.c_str(), prompt.size(), n_gen, worst_rel, worst_abs, n_ties);
  report(ok, buf);
  report(history == dev_tokens, "the device's token history matches the per-step argmax");
  std::printf("     greedy tokens:");
  for (size_t i = prompt.size() - 1; i < dev_tokens.size(); ++i) std::printf(" %d", dev_tokens[i]);
  std::printf("\n");

  // Replays after reset are bit-identical.
  CHECK_OK(dec->reset());
  bool same = true;
  for (int32_t t = 0; t < static_cast<int32_t>(prompt.size()) + n_gen; ++t) {
    if (t < static_cast<int32_t>(prompt.size())) CHECK_OK(dec->set_token(prompt[static_cast<size_t>(t)]));
    CHECK_OK(dec->step(1));
    CHECK_OK(dec->synchronize());
    std::vector<float> lg;
    CHECK_OK(dec->read_logits(&lg));
    same &= lg == dev_logits[static_cast<size_t>(t)];
  }
  report(same, "a second run after reset() gives bit-identical logits at every step");

  // Greedy steps queued back to back with no host round trip give the same tokens.
  CHECK_OK(dec->reset());
  for (int32_t t = 0; t < static_cast<int32_t>(prompt.size()); ++t) {
    CHECK_OK(dec->set_token(prompt[static_cast<size_t>(t)]));
    CHECK_OK(dec->step(1));
  }
  CHECK_OK(dec->step(n_gen));
  CHECK_OK(dec->synchronize());
  std::vector<int32_t> history2;
  CHECK_OK(dec->read_generated(&history2));
  report(history2 == dev_tokens, "n graph replays queued at once generate the same tokens");

  // Clear errors.
  const lc::Status full = dec->step(opt.max_context);
  report(!full.ok(), "a step past max_context is refused: \"" + full.message() + "\"");
  report(!dec->set_token(m.n_vocab).ok(), "a token outside the vocabulary is refused");
  report(!dec->fill_kv_synthetic(opt.max_context).ok(), "a synthetic fill that leaves no room is refused");
}

// The prompt through prefill() (every layer over all 19 tokens at once: the GEMMs with 19 columns, the prefill
// attention kernel, RoPE and the append of 19 rows across two 16-token pages), then greedy steps, against the same
// reference fed token by token.
void test_prefill(lc::MatvecPath path) {
  const std::string pname = path == lc::MatvecPath::Fused ? "fused GEMV" : "cuBLASLt";
  longctx::ModelShape m;
  uint64_t seed = 0;
  CHECK_OK(lc::synthetic_shape("tiny:7", &m, &seed));
  lc::LlamaDecodeOptions opt;
  opt.max_context = 64;
  opt.page_tokens = 16;
  opt.matvec = path;
  std::unique_ptr<lc::LlamaDecoder> dec;
  CHECK_OK(lc::LlamaDecoder::create(m, seed, opt, &dec));
  test::SyntheticLlamaReference ref(m, seed, test::RefRounding::DeviceBf16);
  const std::vector<int32_t> prompt = {3, 141, 59, 265, 35, 89, 7, 300, 12, 450, 61, 77, 5, 222, 90, 18, 400, 33, 2};
  std::vector<float> rl;
  for (int32_t t : prompt) rl = ref.forward(t);

  CHECK_OK(dec->prefill(prompt));
  std::vector<float> lg;
  CHECK_OK(dec->read_logits(&lg));
  int32_t tok = -1;
  CHECK_OK(dec->read_last_token(&tok));
  StepCheck c = check_step(lg, tok, rl, m.n_vocab);
  bool ok = c.ok;
  double worst_rel = c.rel, worst_abs = c.max_abs;
  std::vector<int32_t> tokens = {tok};
  const int32_t n_gen = 12;
  for (int32_t i = 0; i < n_gen; ++i) {
    rl = ref.forward(tok);
    CHECK_OK(dec->step(1));
    CHECK_OK(dec->synchronize());
    CHECK_OK(dec->read_logits(&lg));
    CHECK_OK(dec->read_last_token(&tok));
    c = check_step(lg, tok, rl, m.n_vocab);
    if (!c.ok)
      std::printf("     step %d after the prefill: rel L2 %.2e, max abs %.2e, token %d, reference argmax %d\n", i,
                  c.rel, c.max_abs, tok, c.ref_best);
    ok &= c.ok;
    worst_rel = std::max(worst_rel, c.rel), worst_abs = std::max(worst_abs, c.max_abs);
    tokens.push_back(tok);
  }
  char buf[300];
  std::snprintf(buf, sizeof buf,
                "tiny llama, %s: prefill of %zu tokens, then %d greedy steps vs host reference: worst logits rel L2 "
                "%.2e, max abs %.2e",
                pname.c_str(), prompt.size(), n_gen, worst_rel, worst_abs);
  report(ok, buf);
  std::vector<int32_t> history;
  CHECK_OK(dec->read_generated(&history));
  report(history == tokens, "after a prefill the history holds its argmax, then each step's");
  report(dec->position() == static_cast<int32_t>(prompt.size()) + n_gen,
         "the position follows the prefill and the steps");

  const lc::Status again = dec->prefill(prompt);
  report(!again.ok(), "a prefill into a non-empty cache is refused: \"" + again.message() + "\"");
  CHECK_OK(dec->reset());
  report(!dec->prefill(std::vector<int32_t>(static_cast<size_t>(opt.max_context) + 1, 1)).ok(),
         "a prompt longer than max_context is refused");
  report(!dec->prefill({1, m.n_vocab}).ok(), "a prompt token outside the vocabulary is refused");
  report(!dec->prefill({}).ok(), "an empty prompt is refused");
  CHECK_OK(dec->prefill(prompt));  // after those refusals the decoder still works, and gives the same bits again
  std::vector<float> lg_again;
  CHECK_OK(dec->read_logits(&lg_again));
  CHECK_OK(dec->reset());
  CHECK_OK(dec->prefill(prompt));
  std::vector<float> lg_third;
  CHECK_OK(dec->read_logits(&lg_third));
  report(lg_again == lg_third && !lg_third.empty(), "a prefill after reset() gives bit-identical logits");
}

void test_errors() {
  longctx::ModelShape m;
  uint64_t seed = 0;
  const lc::Status unknown = lc::synthetic_shape("llama3-70b", &m, &seed);
  report(!unknown.ok(), "unknown synthetic shape -> \"" + unknown.message() + "\"");
  CHECK_OK(lc::synthetic_shape("tiny", &m, &seed));
  lc::LlamaDecodeOptions opt;
  opt.max_context = 1 << 30;  // a KV store of 2^30 tokens x 4 heads x 256 B: 1 TiB, more than any device holds
  std::unique_ptr<lc::LlamaDecoder> dec;
  const lc::Status oom = lc::LlamaDecoder::create(m, seed, opt, &dec);
  report(!oom.ok() && !dec, "a KV store the device cannot hold -> \"" + oom.message() + "\"");
  opt.max_context = 64;
  CHECK_OK(lc::LlamaDecoder::create(m, seed, opt, &dec));  // the device still works after the refusal
  report(dec != nullptr, "the device still works after the refusal");
  // The synthetic KV fill (benchmarks) gives finite logits.
  CHECK_OK(dec->fill_kv_synthetic(40));
  CHECK_OK(dec->set_token(5));
  CHECK_OK(dec->step(3));
  CHECK_OK(dec->synchronize());
  std::vector<float> lg;
  CHECK_OK(dec->read_logits(&lg));
  report(std::all_of(lg.begin(), lg.end(), [](float v) { return std::isfinite(v); }) && dec->position() == 43,
         "3 steps over a synthetic 40-token KV give finite logits");
}


// A store that may hold KIVI pages (the shape a KV policy leaves): with plain pages only it decodes as the plain store
// does; a compressed synthetic fill decodes to finite logits; reset() makes every page plain again.
void test_compressed_store() {
  longctx::ModelShape m;
  uint64_t seed = 0;
  CHECK_OK(lc::synthetic_shape("tiny:3", &m, &seed));
  auto run = [&](lc::LlamaDecoder& dec, std::vector<float>* logits) {
    CHECK_OK(dec.reset());
    CHECK_OK(dec.set_token(7));
    CHECK_OK(dec.step(20));
    CHECK_OK(dec.synchronize());
    CHECK_OK(dec.read_logits(logits));
    std::vector<int32_t> toks;
    CHECK_OK(dec.read_generated(&toks));
    return toks;
  };
  lc::LlamaDecodeOptions opt;
  opt.max_context = 512;
  opt.tune_gemms = false;
  std::unique_ptr<lc::LlamaDecoder> plain, packed;
  CHECK_OK(lc::LlamaDecoder::create(m, seed, opt, &plain));
  opt.kv_packing = lc::KvPacking::Kivi2;
  CHECK_OK(lc::LlamaDecoder::create(m, seed, opt, &packed));
  std::vector<float> lp, lk, lk2;
  const std::vector<int32_t> tp = run(*plain, &lp), tk = run(*packed, &lk);
  double worst = 0;
  for (size_t i = 0; i < lp.size(); ++i) worst = std::max(worst, static_cast<double>(std::fabs(lp[i] - lk[i])));
  report(tp == tk && worst <= 1e-3, "a store that may hold KIVI pages, holding none, decodes as the plain one (max |dlogit| " +
                                         std::to_string(worst) + ")");
  CHECK_OK(packed->fill_kv_compressed_synthetic(4000, 300));
  CHECK_OK(packed->set_token(9));
  CHECK_OK(packed->step(10));
  CHECK_OK(packed->synchronize());
  std::vector<float> lc_;
  CHECK_OK(packed->read_logits(&lc_));
  report(std::all_of(lc_.begin(), lc_.end(), [](float v) { return std::isfinite(v); }) && packed->position() == 4010,
         "10 steps over 4000 tokens compressed to 300 slots (kivi2 pages) give finite logits at position 4010");
  const std::vector<int32_t> tk2 = run(*packed, &lk2);
  report(tk2 == tk && lk2 == lk, "after reset() the same prompt gives bit-identical logits again (pages plain)");
  report(!plain->fill_kv_compressed_synthetic(4000, 300).ok(), "a compressed fill without kv_packing is refused");
  report(!packed->fill_kv_compressed_synthetic(4000, 512).ok(), "a compressed fill past max_context is refused");
}

}  // namespace

int main() {
  lc::DeviceInfo info;
  if (lc::Status s = lc::device_query(&info); !s.ok()) {
    std::printf("SKIP: %s\n", s.message().c_str());
    return 77;
  }
  std::printf("device: %s (sm_%d%d, %d SMs)\n", info.name.c_str(), info.cc_major, info.cc_minor, info.n_sm);
  test_end_to_end(lc::MatvecPath::CublasLt);
  test_end_to_end(lc::MatvecPath::Fused);
  test_end_to_end(lc::MatvecPath::Fused, lc::WeightPrefetch::WoEvictLast);
  test_prefill(lc::MatvecPath::CublasLt);
  test_prefill(lc::MatvecPath::Fused);
  test_errors();
  test_compressed_store();
  std::printf("%s: %d failure(s)\n", g_failures ? "FAILED" : "PASSED", g_failures);
  return g_failures ? 1 : 0;
}
