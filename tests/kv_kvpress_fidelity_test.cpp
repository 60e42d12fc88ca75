// Fidelity of the engine's token policies against an independent implementation: NVIDIA kvpress 0.5.5 running the
// same GGUF (dequantized to f32 by transformers) on the same token ids, at the same budget in tokens
// (scripts/gen_kvpress_goldens.py writes tests/golden/kvpress/smollm2.json; this test needs no Python). The engine
// prefills each prompt with the policy and an f32 cache, and the positions every (layer, kv-head) kept are compared
// with kvpress's.
//
// The measure: per (layer, kv-head), the Jaccard index |ours ∩ ref| / |ours ∪ ref| of the kept position sets, and
// the set sizes. Each method must keep exactly the reference's count per head; every head must reach a Jaccard of
// 0.95 or differ by at most 3 tokens (the small top layers of PyramidKV keep ~36 tokens, where one flip at the cut
// costs 0.05); the mean over a case's 90 heads must reach 0.98 (StreamingLLM: identical sets). Disagreement on a
// few tokens per prompt is expected and printed ("near misses": our extra tokens that kvpress ranks just below its
// cut, in the golden's `next` list); a different rule (a window not kept, a wrong reduction over heads, a budget
// counted differently) moves far more than that.
//
// Systematic differences between the two implementations, and what each can move:
// - Scores: both compute softmax(q k^T / sqrt(d)) of the same queries against the same post-RoPE f32 keys from the
//   same f32-dequantized weights, but the engine's prefill matmuls may multiply 16-bit-quantized activations
//   (matmul.h, Q16Activations on CPUs with VNNI) and summation orders differ: only near ties at the cut can flip
//   (the golden's boundary_gap says how near each cut is).
// - GQA: kvpress averages the query heads of a group (SnapKV: mean over the window's queries, then over the
//   group, as SnapKV's authors settled); the engine sums them (attention.h, attention_scores). A sum is the mean
//   times a constant per head, so the ranking within a head is the same.
// - SnapKV pooling: kvpress's F.avg_pool1d pads with zeros and divides by the full kernel at the ends (PyTorch's
//   count_include_pad=True, as SnapKV's own code does); the engine averages over the neighbours that exist. Only
//   the first and last kernel/2 positions before the window score differently (by up to kernel / (kernel/2 + 1)):
//   position 0 and 1 where the first token is no attention sink (these prompts have no BOS), and the last ones
//   before the window. This is nearly all of the remaining disagreement (kvpress with count_include_pad=False
//   leaves a token or two per prompt, near ties at the cut). Pooling is linear, so pooling per query
//   head and then averaging (kvpress) equals pooling the group's sum (engine).
// - SnapKV's window: both keep the last window_size tokens and count them in the budget (kvpress pads their scores
//   with max + 1 so top-k takes them).
// - TOVA: the paper (and its official code) averages the last query's attention over ALL heads of a layer, so
//   every kv-head of a layer keeps the same tokens; kvpress does the same (scores.mean over heads, repeated per
//   kv-head). kvpress also forces the last token in; TOVA's own rule keeps it when its self-attention ranks in the
//   budget, which it nearly always does.
// - PyramidKV: the paper's code (KVCache-Factory) keeps the observation window ON TOP of each layer's budget of
//   selected tokens; kvpress 0.5.5 counts the window inside it (PyramidKVPress.compress takes top-k of n_kept
//   with the window's scores at max + 1). Both use the same pyramid of budgets (the first layer 2B - B/beta, the
//   last B/beta, linear between, B the mean). This test holds the engine to the paper: each layer keeps kvpress's
//   n_kept plus window_size tokens, the extra ones being kvpress's next window_size by score (the golden's
//   `next`), so selection is still compared with kvpress's ranking.
// - ChunkKV (ChunkKVPress around SnapKVPress, kernel_size 1, chunk_length 10): kvpress tiles the whole prompt into
//   chunks from position 0, window included, ranks them by the mean of their scores summed over the layer's
//   kv-heads, and keeps int(n_chunks * (1 - ratio)) of them, the window's always (its scores are max + 1). The
//   engine, as the paper, tiles only the tokens before the window and keeps the window plus (budget - window) /
//   chunk chunks. The golden picks a window that makes n - window a multiple of the chunk length and the engine's
//   budget that keeps as many chunks, so both rules mean the same chunks; the sets match exactly on these prompts
//   (a flip at the cut would move a whole chunk: the tolerance allows one, 10 tokens).
// - AdaKV (AdaKVPress around SnapKVPress): each head's top int(alpha * n_kept) forced in, then the top n_kv_head *
//   n_kept of the layer's scores. The engine shares the layer's budget the same way by SnapKV's pooled scores (its
//   sum over the query heads is kvpress's mean times the group size, the same factor for every head, so the
//   ranking across heads is kept). The pooling's end effects (above) move a token or two between heads: each
//   head's count may differ by 3 tokens, each layer's total must match exactly.
// - StreamingLLM: both keep the first n_sink tokens and the most recent ones: the sets must be identical.
// - The budget: kvpress keeps int(n * (1 - compression_ratio)); the golden's ratio is chosen so that this is
//   exactly `budget`, the engine's budget=N.
// - Expected Attention: both gather the queries past the 4 sinks before RoPE (kvpress recomputes them from the
//   layer's input, the engine keeps the forward's own), average the RoPE rotation of the next 512 positions, and
//   score exp(mu.k / sqrt(d) + k^T Sigma k / (2d)), softmax over the non-sink keys, mean over the group, times |v|.
//   The engine accumulates the covariance's outer products in f32 per chunk (policy.h, KvQueryStats) and its
//   logits in f32: only near ties at the cut can flip. KVzip is not compared (scripts/gen_kvpress_goldens.py).
// - Knorm (KnormPress) has no engine counterpart and is not compared.
// - SmolLM2 only: kvpress leaves Gemma 3's sliding-window layers alone (in Gemma3ForConditionalGeneration; the
//   text-only Gemma3ForCausalLM is not among its supported models), while the engine's policy covers every layer
//   and expires the sliding layers' tokens by the window: a comparison there would need another setup.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/generator.h"
#include "kv/policy.h"
#include "model/model.h"
#include "smollm2_suite.h"
#include "tokenizer/tokenizer.h"

namespace longctx {
namespace {

using nlohmann::json;

json load_golden(const std::string& name = "smollm2.json") {
  std::ifstream in(test::golden_dir() + "/kvpress/" + name);
  EXPECT_TRUE(in.good()) << "missing golden tests/golden/kvpress/" << name;
  return json::parse(in);
}

// Positions set in a base64 bitmask (RFC 4648): position p is bit p % 8 of byte p / 8.
std::vector<int32_t> decode_mask(const std::string& b64) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;  // '=' padding
  };
  std::vector<uint8_t> bytes;
  uint32_t acc = 0;
  int n_bits = 0;
  for (char c : b64) {
    const int v = value(c);
    if (v < 0) break;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    n_bits += 6;
    if (n_bits >= 8) {
      n_bits -= 8;
      bytes.push_back(static_cast<uint8_t>((acc >> n_bits) & 0xff));
    }
  }
  std::vector<int32_t> pos;
  for (size_t i = 0; i < bytes.size(); ++i)
    for (int b = 0; b < 8; ++b)
      if ((bytes[i] >> b) & 1) pos.push_back(static_cast<int32_t>(i * 8 + b));
  return pos;
}

TEST(KvpressGolden, MaskDecoding) {
  // 0b00000101 then 0b10000000: positions 0, 2 and 15.
  EXPECT_EQ(decode_mask("BYA="), (std::vector<int32_t>{0, 2, 15}));
  EXPECT_EQ(decode_mask("AAAB"), (std::vector<int32_t>{16}));
}

struct Thresholds {
  double min_jaccard;       // every (layer, kv-head), unless it differs by at most max_flips tokens
  int max_flips;
  double min_mean_jaccard;  // over all of a case's heads
  int max_count_off = 0;    // tokens a head's count may differ by (AdaKV: the layer's total must still match)
};
constexpr Thresholds kExact{1.0, 0, 1.0};
constexpr Thresholds kScored{0.95, 3, 0.98};
// ChunkKV: one chunk swapped at the cut moves chunk_length (10) tokens at once.
constexpr Thresholds kChunks{0.94, 10, 0.98};
// AdaKV: a near tie at the layer's cut moves a token from one head's share to another's.
constexpr Thresholds kAdaptive{0.95, 3, 0.98, 3};

// What the method keeps per the reference: kvpress's set, or (PyramidKV as its paper) kvpress's set plus its next
// `extra` positions by score.
std::vector<int32_t> reference_set(const json& c, int32_t layer, int32_t kv_head, int32_t extra) {
  const int32_t m = c["kept"][layer][kv_head].get<int32_t>();
  std::vector<int32_t> ref = decode_mask(c["masks"][m].get<std::string>());
  if (extra > 0) {
    const auto& next = c["next"][layer][kv_head];
    EXPECT_GE(static_cast<int32_t>(next.size()), extra) << "golden's next list is too short";
    for (int32_t i = 0; i < extra && i < static_cast<int32_t>(next.size()); ++i) ref.push_back(next[i].get<int32_t>());
    std::sort(ref.begin(), ref.end());
  }
  return ref;
}

class KvpressFidelity : public test::SmolLM2Suite {
 protected:
  static void SetUpTestSuite() {
    SmolLM2Suite::SetUpTestSuite();
    if (model_ == nullptr) return;  // each test reports the missing model
    gold_ = new json(load_golden());
    gold_query_agnostic_ = new json(load_golden("smollm2_query_agnostic.json"));
  }
  static void TearDownTestSuite() {
    delete gold_;
    delete gold_query_agnostic_;
    SmolLM2Suite::TearDownTestSuite();
  }

  // Runs every prompt of the press through the engine and compares. window_on_top: the method keeps its window of
  // window_size tokens on top of kvpress's n_kept (PyramidKV's paper). same_across_heads: every kv-head of a layer
  // must keep one set (TOVA). golden: the file the press is in (null: smollm2.json).
  void check_press(const std::string& press, const Thresholds& th, bool window_on_top = false,
                   bool same_across_heads = false, const json* golden = nullptr) {
    LONGCTX_REQUIRE_MODEL(test::smollm2_path());
    const json& gold = golden != nullptr ? *golden : *gold_;
    const int32_t n_layer = model_->config().n_layer, n_head_kv = model_->config().n_head_kv;
    ASSERT_EQ(gold["model"]["n_layer"].get<int32_t>(), n_layer);
    ASSERT_EQ(gold["model"]["n_head_kv"].get<int32_t>(), n_head_kv);
    int n_cases = 0;
    for (const json& c : gold["cases"]) {
      if (c["press"] != press) continue;
      ++n_cases;
      const json* prompt = nullptr;
      for (const json& p : gold["prompts"])
        if (p["name"] == c["prompt"]) prompt = &p;
      ASSERT_NE(prompt, nullptr) << "golden case names a missing prompt";
      const std::vector<int32_t> ids = (*prompt)["input_ids"].get<std::vector<int32_t>>();
      const std::string where = press + "/" + c["prompt"].get<std::string>();
      // Same ids as our tokenizer gives for the text (no BOS, special tokens parsed): the engine reads what a user
      // of the same prompt would feed it.
      EXPECT_EQ(tok_->encode((*prompt)["text"].get<std::string>(), false, true), ids)
          << where << ": our tokenizer disagrees with the reference's ids";

      const int32_t extra = window_on_top ? c["params"]["window_size"].get<int32_t>() : 0;
      std::string spec = c["engine_spec"].get<std::string>();
      // kvpress's ChunkKV tiles fixed chunks (the paper's): ours without the text's boundaries, which the engine
      // would tell it from the tokenizer.
      if (spec.rfind("chunkkv:", 0) == 0 && spec.find("align=") == std::string::npos) spec += ",align=none";
      spec += "+full:type=f32";
      if (window_on_top) {
        // Our pyramid, as the paper's code, spreads budget - window over the layers and keeps the window on top of
        // each: kvpress's per-layer counts plus the window are our pyramid at budget = kvpress's mean + window.
        const std::string key = "pyramid:budget=";
        const size_t at = spec.find(key) + key.size(), end = spec.find_first_of(",+", at);
        spec.replace(at, end - at, std::to_string(std::stoi(spec.substr(at, end - at)) + extra));
      }
      auto policy = kv::make_kv_policy(spec, n_layer, n_head_kv);
      GenerateParams gp;
      gp.n_ctx = static_cast<int32_t>(ids.size()) + 8;
      gp.n_batch = 256;
      gp.n_predict = 0;  // prefill and the policy's after-prefill cut only: no decode-time eviction
      Generator gen(*model_, *tok_, *pool_, *policy, gp);
      gen.generate(ids, [](std::string_view) { return true; }, nullptr);

      double sum_j = 0, min_j = 1, sum_j_at_size = 0;
      int n_at_size = 0;
      int n_layer_total_wrong = 0;
      int n_heads = 0, n_below = 0, n_size_wrong = 0, n_diff_tokens = 0, n_near = 0, n_mixed_layers = 0;
      std::string worst, details;
      int n_shown = 0;
      for (int32_t l = 0; l < n_layer; ++l) {
        std::vector<int32_t> first_head;
        bool mixed = false;
        int layer_ours = 0, layer_ref = 0;
        for (int32_t g = 0; g < n_head_kv; ++g) {
          std::vector<int32_t> ours = gen.sequence().head(l, g).positions;
          std::sort(ours.begin(), ours.end());
          const std::vector<int32_t> ref = reference_set(c, l, g, extra);
          std::vector<int32_t> inter, uni, only_ours;
          std::set_intersection(ours.begin(), ours.end(), ref.begin(), ref.end(), std::back_inserter(inter));
          std::set_union(ours.begin(), ours.end(), ref.begin(), ref.end(), std::back_inserter(uni));
          std::set_difference(ours.begin(), ours.end(), ref.begin(), ref.end(), std::back_inserter(only_ours));
          const double j = uni.empty() ? 1.0 : static_cast<double>(inter.size()) / uni.size();
          // Near misses: tokens we keep that kvpress ranks within NEXT_RANKED below its own cut.
          const auto& next = c.contains("next") ? c["next"][l][g] : json::array();
          for (int32_t p : only_ours)
            if (std::find(next.begin(), next.end(), p) != next.end()) ++n_near;
          // Where the counts differ, the selection at our own count: kvpress's ranking cut at |ours| (its kept
          // set, then its next by score), so a budget rule and a ranking fault are told apart.
          const int32_t n_ref_kept =
              c.contains("n_kept_heads") ? c["n_kept_heads"][l][g].get<int32_t>() : c["n_kept"][l].get<int32_t>();
          const int32_t n_ours = static_cast<int32_t>(ours.size());
          if (n_ours != static_cast<int32_t>(ref.size()) && n_ours >= n_ref_kept &&
              n_ours <= n_ref_kept + static_cast<int32_t>(next.size())) {
            std::vector<int32_t> cut = reference_set(c, l, g, n_ours - n_ref_kept), in_cut;
            std::set_intersection(ours.begin(), ours.end(), cut.begin(), cut.end(), std::back_inserter(in_cut));
            sum_j_at_size += static_cast<double>(in_cut.size()) / (2 * n_ours - in_cut.size());
            ++n_at_size;
          }
          n_diff_tokens += static_cast<int>(only_ours.size());
          if (!only_ours.empty() && n_shown < 4) {
            std::vector<int32_t> only_ref;
            std::set_difference(ref.begin(), ref.end(), ours.begin(), ours.end(), std::back_inserter(only_ref));
            std::ostringstream line;
            line << "    layer " << l << " kv-head " << g << ": only ours";
            for (size_t i = 0; i < std::min<size_t>(only_ours.size(), 8); ++i) line << ' ' << only_ours[i];
            line << "; only kvpress";
            for (size_t i = 0; i < std::min<size_t>(only_ref.size(), 8); ++i) line << ' ' << only_ref[i];
            details += line.str() + "\n";
            ++n_shown;
          }
          if (std::abs(static_cast<int>(ours.size()) - static_cast<int>(ref.size())) > th.max_count_off) ++n_size_wrong;
          layer_ours += static_cast<int>(ours.size());
          layer_ref += static_cast<int>(ref.size());
          const int n_off = static_cast<int>(std::max(uni.size() - ours.size(), uni.size() - ref.size()));
          if (j < th.min_jaccard && n_off > th.max_flips) ++n_below;
          if (j < min_j) {
            min_j = j;
            std::ostringstream w;
            w << "layer " << l << " kv-head " << g << ": ours " << ours.size() << " tokens, kvpress " << ref.size()
              << ", " << inter.size() << " in common";
            worst = w.str();
          }
          sum_j += j;
          ++n_heads;
          if (g == 0) first_head = ours;
          else if (ours != first_head) mixed = true;
        }
        n_mixed_layers += mixed;
        n_layer_total_wrong += layer_ours != layer_ref;
      }
      const double mean_j = sum_j / n_heads;
      std::printf("  %-22s Jaccard mean %.4f min %.4f (%s); heads below %.2f (and > %d tokens off): %d of %d; wrong size: %d; "
                  "tokens kept only by us: %d (%d of them kvpress's next %d by score); layers whose kv-heads differ: "
                  "%d\n",
                  where.c_str(), mean_j, min_j, worst.c_str(), th.min_jaccard, th.max_flips, n_below, n_heads, n_size_wrong,
                  n_diff_tokens, n_near, static_cast<int>(c.contains("next") ? c["next"][0][0].size() : 0),
                  n_mixed_layers);
      if (n_at_size > 0)
        std::printf("    %d heads of another count than the reference: at their own count, mean Jaccard %.4f against "
                    "kvpress's ranking\n", n_at_size, sum_j_at_size / n_at_size);
      std::printf("%s", details.c_str());
      EXPECT_EQ(n_size_wrong, 0) << where << ": heads keeping another number of tokens than the reference (by more "
                                 << "than " << th.max_count_off << ")";
      EXPECT_EQ(n_layer_total_wrong, 0) << where << ": layers keeping another number of tokens in all than the reference";
      EXPECT_EQ(n_below, 0) << where << ": heads with Jaccard below " << th.min_jaccard << "; worst " << worst;
      EXPECT_GE(mean_j, th.min_mean_jaccard) << where;
      if (same_across_heads) {
        EXPECT_EQ(n_mixed_layers, 0) << where << ": the paper's rule keeps one set for all heads of a layer";
      }
    }
    EXPECT_GT(n_cases, 0) << "no golden case for " << press;
  }

  static json* gold_;
  static json* gold_query_agnostic_;  // smollm2_query_agnostic.json (--set query_agnostic)
};

json* KvpressFidelity::gold_ = nullptr;
json* KvpressFidelity::gold_query_agnostic_ = nullptr;

// Position only: must be identical.
TEST_F(KvpressFidelity, StreamingLLM) { check_press("streaming", kExact); }

TEST_F(KvpressFidelity, SnapKV) { check_press("snapkv", kScored); }

// All kv-heads of a layer keep one set, ranked by the last query's attention averaged over the layer's query heads.

TEST_F(KvpressFidelity, TOVA) { check_press("tova", kScored, false, /*same_across_heads=*/true); }

// The paper's window on top of each layer's budget: kvpress's set plus its next window_size by score.
TEST_F(KvpressFidelity, PyramidKV) { check_press("pyramidkv", kScored, /*window_on_top=*/true); }

// Whole chunks, one set for all kv-heads of a layer (the attention summed over them), as kvpress's ChunkKVPress.
TEST_F(KvpressFidelity, ChunkKV) { check_press("chunkkv", kChunks, false, /*same_across_heads=*/true); }

// Each layer's budget shared among its kv-heads by SnapKV's scores, after the safeguard.
TEST_F(KvpressFidelity, AdaKV) { check_press("adakv", kAdaptive); }

// Query-agnostic: the prompt's query statistics, turned to the next 512 positions, against every key; the sinks and
// the top by expected attention times the value's norm (tests/golden/kvpress/smollm2_query_agnostic.json).
TEST_F(KvpressFidelity, ExpectedAttention) {
  check_press("expected", kScored, false, false, gold_query_agnostic_);
}

}  // namespace
}  // namespace longctx
