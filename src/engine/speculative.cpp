#include "engine/speculative.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/stop_filter.h"
#include "kv/policy_registry.h"
#include "kv/spec_draft.h"

namespace longctx {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

SpecParams parse_spec(const std::string& spec) {
  const kv::SelfSpec parsed = kv::parse_self_spec(spec);
  SpecParams sp;
  sp.gamma = parsed.gamma;
  sp.draft = parsed.draft;
  return sp;
}

std::string spec_help() {
  return "self[:gamma=N,draft=SPEC]: lossless self-speculation (TriForce): the same model drafts gamma tokens "
         "(default 4) over the pages of the cache that a token policy selects (draft=streaming:budget=512,sink=4 by "
         "default, or snapkv:budget=N), or that quest:budget=N ranks highest for each draft step's query, and the "
         "full cache verifies them in one forward";
}

std::unique_ptr<kv::KvPolicy> make_verifier_policy(const std::string& kv_spec, int32_t n_layer, int32_t n_head_kv,
                                                   const std::string& draft_spec) {
  const std::string spec = kv_spec == "lossless" ? "full" : kv_spec;
  for (const std::string& part : kv::split_spec(spec, '+'))
    if (part.substr(0, part.find(':')) != "full")
      fail("--spec self verifies against the full cache, so --kv '{}' cannot go with it (it evicts or packs); the "
           "draft's view is chosen by --spec self:draft=SPEC instead; use --kv full (or full:type=f32)",
           kv_spec);
  return kv::make_kv_policy(kv::verifier_spec_for_draft(spec, draft_spec), n_layer, n_head_kv);
}

SpecVerdict speculative_verify_token(const float* p, const float* q, int32_t n, int32_t draft, double u_accept,
                                     double u_resample, std::vector<float>& residual) {
  if (draft < 0 || draft >= n) fail("internal: draft token {} outside a vocabulary of {}", draft, n);
  const float pd = p[draft], qd = q[draft];
  // u < min(1, p/q), without the division: a draft token q could not give (qd == 0) is never accepted.
  if (qd > 0.0f && u_accept * qd < pd) return {true, draft};
  residual.resize(static_cast<size_t>(n));
  double mass = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    residual[static_cast<size_t>(i)] = std::max(0.0f, p[i] - q[i]);
    mass += residual[static_cast<size_t>(i)];
  }
  // The residual is empty only when p == q up to rounding, where a rejection has probability ~0: p itself then.
  if (!(mass > 0.0)) return {false, sample_from(p, n, u_resample)};
  return {false, sample_from(residual.data(), n, u_resample)};
}

SpecDraftView::SpecDraftView(const std::string& draft_spec, const ModelConfig& c)
    : spec_(draft_spec), n_layer_(c.n_layer), n_head_kv_(c.n_head_kv) {
  if (!kv::is_read_draft(draft_spec)) ranker_ = kv::make_draft_ranker(draft_spec, owned_);
  local_.assign(c.layer_is_local.begin(), c.layer_is_local.end());
  local_.resize(static_cast<size_t>(c.n_layer), false);
  sel_.resize(static_cast<size_t>(n_layer_) * n_head_kv_);
}

std::string SpecDraftView::describe() const {
  return ranker_ != nullptr ? "pages of " + ranker_->describe() : "the pages " + spec_ + " ranks highest each step";
}

namespace {

// The page holding each slot's first row: slot0 (n_pages + 1).
std::vector<int32_t> page_starts(const kv::KvHeadCache& h) {
  std::vector<int32_t> s0(h.pages.size() + 1, 0);
  for (size_t p = 0; p < h.pages.size(); ++p) s0[p + 1] = s0[p] + h.pages[p].n_rows;
  return s0;
}

}  // namespace

void SpecDraftView::select(const kv::KvSequence& kv, const kv::KvScores* scores, int32_t next_pos) {
  kv_ = &kv;
  tail_from_ = next_pos;
  if (ranker_ == nullptr) return;  // a read draft chooses at each step
  const int32_t budget = ranker_->budget();
  const int32_t T = kv.geometry().page_tokens;
  const int32_t n_pick = kv::draft_page_cap(budget, T);
  const bool want_scores = ranker_->prefill_score_from(1 << 30) != INT_MAX;
  for (int32_t il = 0; il < n_layer_; ++il) {
    if (local_[static_cast<size_t>(il)]) continue;  // a sliding-window layer's cache is already small: read it all
    for (int32_t g = 0; g < n_head_kv_; ++g) {
      const kv::KvHeadCache& h = kv.head(il, g);
      std::vector<int32_t>& sel = sel_[static_cast<size_t>(il) * n_head_kv_ + g];
      sel.clear();
      const int32_t n = h.n_tokens();
      const std::vector<int32_t> s0 = page_starts(h);
      const int32_t n_pages = static_cast<int32_t>(h.pages.size());
      if (n <= budget) {
        for (int32_t p = 0; p < n_pages; ++p) sel.push_back(p);
        continue;
      }
      if (want_scores && (scores == nullptr || !scores->wanted()))
        fail("internal: the draft policy {} needs the prompt's attention scores", ranker_->describe());
      const std::vector<int32_t> keep =
          ranker_->select(h.positions, want_scores ? scores->head(il, g) : nullptr, budget);
      std::vector<int32_t> count(static_cast<size_t>(n_pages), 0);
      int32_t p = 0;
      for (int32_t s : keep) {  // keep is ascending
        while (s >= s0[static_cast<size_t>(p) + 1]) ++p;
        ++count[static_cast<size_t>(p)];
      }
      sel = kv::draft_pages(count, n_pick);
    }
  }
}

void SpecDraftView::refresh(const kv::KvSequence& kv, int32_t next_pos) {
  kv_ = &kv;
  if (ranker_ != nullptr && ranker_->evicts_during_decode() && next_pos - tail_from_ >= kv.geometry().page_tokens)
    select(kv, nullptr, next_pos);
}

std::vector<int32_t> SpecDraftView::pages(const kv::KvSequence& kv, int32_t layer, int32_t kv_head) const {
  if (ranker_ == nullptr) fail("internal: a Quest draft's pages depend on each step's query");
  const kv::KvHeadCache& h = kv.head(layer, kv_head);
  const int32_t n_pages = static_cast<int32_t>(h.pages.size());
  std::vector<int32_t> out;
  if (local_[static_cast<size_t>(layer)]) {
    for (int32_t p = 0; p < n_pages; ++p) out.push_back(p);
    return out;
  }
  // Pages from the one holding the first position >= tail_from_ on are read whole.
  const int32_t first_tail_slot = static_cast<int32_t>(
      std::lower_bound(h.positions.begin(), h.positions.end(), tail_from_) - h.positions.begin());
  int32_t tail_page = n_pages, s0 = 0;
  for (int32_t p = 0; p < n_pages; ++p) {
    if (first_tail_slot < s0 + h.pages[static_cast<size_t>(p)].n_rows) {
      tail_page = p;
      break;
    }
    s0 += h.pages[static_cast<size_t>(p)].n_rows;
  }
  for (int32_t p : sel_[static_cast<size_t>(layer) * n_head_kv_ + kv_head])
    if (p < tail_page) out.push_back(p);
  for (int32_t p = tail_page; p < n_pages; ++p) out.push_back(p);
  return out;
}

void SpecDraftView::narrow(int32_t layer, const float* q, const int32_t* q_pos, int32_t n_tok, KvLayerView& view) {
  if (kv_ == nullptr) fail("internal: the draft view was never selected");
  if (ranker_ == nullptr) {
    if (read_draft_ == nullptr) fail("internal: the Quest draft has no read filter");
    for (const KvHeadView& hv : view.heads) n_full_ += hv.n_tokens;
    read_draft_->narrow(layer, q, q_pos, n_tok, view);
    for (const KvHeadView& hv : view.heads) n_read_ += hv.n_tokens;
    return;
  }
  positions_.resize(view.heads.size());
  for (size_t g = 0; g < view.heads.size(); ++g) {
    KvHeadView& hv = view.heads[g];
    n_full_ += hv.n_tokens;
    const std::vector<int32_t> keep = pages(*kv_, layer, static_cast<int32_t>(g));
    if (static_cast<int32_t>(keep.size()) != hv.n_pages()) hv = keep_pages(hv, keep, positions_[g]);
    n_read_ += hv.n_tokens;
  }
}

namespace {

SessionOptions spec_session_options(const GenerateParams& p, const SpecParams& spec) {
  if (spec.gamma < 1 || spec.gamma > kv::SelfSpec::kMaxGamma)
    fail("--spec: gamma must be in [1, {}], not {}", kv::SelfSpec::kMaxGamma, spec.gamma);
  SessionOptions o;
  o.n_ctx = p.n_ctx;
  o.n_batch = p.n_batch;
  o.device = p.device;
  o.n_step_tokens = spec.gamma + 1;  // a verify step runs the current token and gamma drafts in one forward
  return o;
}

}  // namespace

SpeculativeGenerator::SpeculativeGenerator(const Model& model, ThreadPool& pool, const GenerateParams& params,
                                           const SpecParams& spec)
    : model_(model),
      params_(params),
      spec_(spec),
      view_(spec.draft, model.config()),
      session_(model, pool, spec_session_options(params, spec)),
      seq_(session_.add_sequence(
          make_verifier_policy(spec.verifier_kv, model.config().n_layer, model.config().n_head_kv, spec.draft))) {
  if (view_.is_read_draft()) view_.set_read_draft(session_.policy(seq_).read_filter());
}

void SpeculativeGenerator::prefill(const std::vector<int32_t>& prompt, const ProgressFn& on_progress,
                                   std::vector<float>& logits) {
  const int32_t n = static_cast<int32_t>(prompt.size());
  if (n == 0) fail("the prompt is empty");
  session_.reset_sequence(seq_);
  spec_stats_ = SpecStats{};
  PrefillOptions po;
  po.logit_positions = {n - 1};
  po.progress = on_progress;
  po.score_from = view_.prefill_score_from(n);
  po.on_scores = [&](const kv::KvSequence& kv, const kv::KvScores& scores) {
    view_.select(kv, &scores, n);
    if (scores.wanted()) scores_ = scores;  // decode() selects over the prompt again
  };
  scores_ = kv::KvScores{};
  session_.prefill(seq_, prompt, po, logits);
  prefilled_ = n;
  decoded_ = false;
}

std::vector<int32_t> SpeculativeGenerator::draft(int32_t cur, int32_t pos, int32_t g, Sampler& sampler) {
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t V = model_.config().n_vocab;
  if (session_.position(seq_) != pos) fail("internal: drafting at {} after {} cached positions", pos, session_.position(seq_));
  view_.refresh(sequence(), pos);
  Sampler qs = sampler;  // the repetition history, extended by the draft's own tokens
  q_.resize(static_cast<size_t>(g) * V);
  logits_.resize(static_cast<size_t>(spec_.gamma + 1) * V);
  std::vector<float> probs;
  std::vector<int32_t> out;
  int32_t tok = cur;
  for (int32_t i = 0; i < g; ++i) {
    session_.extend(seq_, &tok, 1, {0}, logits_.data(), nullptr, &view_);
    qs.probabilities(logits_.data(), V, probs);
    std::copy(probs.begin(), probs.end(), q_.begin() + static_cast<ptrdiff_t>(i) * V);
    tok = sample_from(probs.data(), V, sampler.uniform());
    qs.accept(tok);
    out.push_back(tok);
  }
  session_.truncate(seq_, pos);  // the draft's keys and values are not the verifier's
  spec_stats_.draft_seconds += seconds_since(t0);
  return out;
}

GenerateStats SpeculativeGenerator::generate_tokens(const std::vector<int32_t>& prompt, const TokenFn& on_token,
                                                    const ProgressFn& on_progress) {
  std::vector<float> logits;
  const auto t0 = std::chrono::steady_clock::now();
  prefill(prompt, on_progress, logits);
  const double prefill_seconds = seconds_since(t0);
  GenerateStats st = decode(prompt, logits, on_token, DecodeMode::Speculative);
  st.prefill_seconds = prefill_seconds;
  return st;
}

GenerateStats SpeculativeGenerator::decode(const std::vector<int32_t>& prompt, const std::vector<float>& logits,
                                           const TokenFn& on_token, DecodeMode mode) {
  GenerateStats st;
  const ModelConfig& c = model_.config();
  const int32_t V = c.n_vocab;
  st.n_prompt = static_cast<int32_t>(prompt.size());
  if (prefilled_ != st.n_prompt) fail("internal: decode() after a prefill of {} tokens, not of this prompt ({})", prefilled_, st.n_prompt);
  if (decoded_ && c.sliding_window > 0)
    fail("internal: decoding twice on one prefill needs a model without sliding-window layers (their expired tokens "
         "do not come back); prefill again");
  decoded_ = true;
  session_.truncate(seq_, st.n_prompt);  // back to the prompt: what an earlier decode appended goes
  view_.select(sequence(), &scores_, st.n_prompt);  // the prompt's selection (slots are the prefill's again)
  spec_stats_ = SpecStats{};
  const int64_t read0 = view_.n_tokens_read(), full0 = view_.n_tokens_full();
  const auto t0 = std::chrono::steady_clock::now();

  Sampler sampler(params_.sampling);
  for (int32_t t : prompt) sampler.accept(t);
  bool stopped = false;
  // Hands one token out; an end-of-generation token is not counted.
  auto emit = [&](int32_t id) {
    StopReason why = StopReason::Length;
    const bool more = on_token(id, &why);
    if (!(!more && why == StopReason::Eog)) {
      st.tokens.push_back(id);
      ++st.n_generated;
    }
    if (!more) {
      st.stop_reason = why;
      stopped = true;
    }
    return more;
  };
  // The last logits row the verifier read, hashed once at the end (a row is the vocabulary: hashing each costs).
  const float* last_row = logits.data();
  int32_t cur = -1;
  if (params_.n_predict > 0) {
    cur = sampler.sample(logits.data(), V);
    sampler.accept(cur);
    emit(cur);
  }
  int32_t pos = st.n_prompt;
  std::vector<int32_t> toks, rows;
  std::vector<float> prow;
  while (!stopped) {
    if (st.n_generated >= params_.n_predict) {
      st.stop_reason = StopReason::Length;
      break;
    }
    if (pos >= params_.n_ctx) {
      st.stop_reason = StopReason::ContextFull;
      break;
    }
    // The step runs positions pos..pos+g, all inside the context, and emits at most g + 1 tokens.
    const int32_t g = mode == DecodeMode::Plain
                          ? 0
                          : std::min({spec_.gamma, params_.n_ctx - 1 - pos, params_.n_predict - st.n_generated - 1});
    const std::vector<int32_t> drafts = g > 0 ? draft(cur, pos, g, sampler) : std::vector<int32_t>{};

    const auto tv = std::chrono::steady_clock::now();
    toks.assign(1, cur);
    toks.insert(toks.end(), drafts.begin(), drafts.end());
    rows.resize(static_cast<size_t>(g) + 1);
    for (int32_t i = 0; i <= g; ++i) {
      rows[static_cast<size_t>(i)] = i;
    }
    logits_.resize(static_cast<size_t>(spec_.gamma + 1) * V);
    session_.extend(seq_, toks.data(), g + 1, rows, logits_.data());
    Sampler ps = sampler;  // the verifier's repetition history follows the accepted drafts
    int32_t n_acc = 0, next = -1;
    for (int32_t i = 0; i <= g; ++i) {
      const float* row = logits_.data() + static_cast<size_t>(i) * V;
      last_row = row;
      ps.probabilities(row, V, prow);
      if (i == g) {  // every draft accepted: the verifier's own next token
        next = sample_from(prow.data(), V, sampler.uniform());
        break;
      }
      const double u_accept = sampler.uniform(), u_resample = sampler.uniform();
      const SpecVerdict v = speculative_verify_token(prow.data(), q_.data() + static_cast<size_t>(i) * V, V,
                                                     drafts[static_cast<size_t>(i)], u_accept, u_resample, residual_);
      if (!v.accepted) {
        next = v.token;
        break;
      }
      ++n_acc;
      ps.accept(v.token);
    }
    // Cached: cur and the accepted drafts; the rejected drafts' slots go.
    session_.truncate(seq_, pos + n_acc + 1);
    spec_stats_.n_steps += 1;
    spec_stats_.n_drafted += g;
    spec_stats_.n_accepted += n_acc;
    spec_stats_.n_emitted += n_acc + 1;
    spec_stats_.verify_seconds += seconds_since(tv);
    for (int32_t i = 0; i < n_acc && !stopped; ++i) {
      sampler.accept(drafts[static_cast<size_t>(i)]);
      emit(drafts[static_cast<size_t>(i)]);
    }
    if (stopped) break;
    sampler.accept(next);
    emit(next);
    cur = next;
    pos += n_acc + 1;
    session_.expire_window(seq_, pos);
  }
  st.decode_seconds = seconds_since(t0);
  if (view_.n_tokens_full() > full0)
    spec_stats_.draft_read_fraction =
        static_cast<double>(view_.n_tokens_read() - read0) / static_cast<double>(view_.n_tokens_full() - full0);
  st.kv_bytes = session_.bytes(seq_);
  st.kv_full_f16_bytes = sequence().full_f16_bytes(pos);
  st.kv_pool_bytes = session_.pages().bytes_reserved();
  st.kv_pool_peak_bytes = session_.pages().bytes_reserved_peak();
  st.kv_peak_bytes = session_.peak_bytes(seq_);
  st.logits_hash = logits_hash(last_row, V);
  return st;
}

GenerateStats SpeculativeGenerator::generate(const std::vector<int32_t>& prompt, const Tokenizer& tok,
                                             const TextFn& on_text, const ProgressFn& on_progress) {
  StopFilter filter(params_.stop);
  bool keep_going = true;
  GenerateStats st = generate_tokens(
      prompt,
      [&](int32_t id, StopReason* why) {
        if (!params_.ignore_eog && tok.is_eog(id)) {
          *why = StopReason::Eog;
          return false;
        }
        if (filter.push(tok.token_bytes(id), on_text, keep_going)) {
          *why = StopReason::StopString;
          return false;
        }
        if (!keep_going) {
          *why = StopReason::Cancelled;
          return false;
        }
        return true;
      },
      on_progress);
  if (st.stop_reason != StopReason::StopString) filter.flush(on_text);
  return st;
}

}  // namespace longctx
