// The engine session (session.h): cache layout from the policy, prefill with the policy's hooks, decode steps over
// several sequences, window expiry.
#include "engine/session.h"

#include <algorithm>
#include <cstring>

#include "backend/backend.h"
#include "core/error.h"

namespace longctx {

struct EngineSession::Sequence {
  std::unique_ptr<kv::KvPolicy> owned;
  kv::KvPolicy* policy = nullptr;
  std::unique_ptr<kv::KvSequence> kv;
  kv::KvScores scores;  // gathered for the policy: the prefill's, then each decode step's
  int32_t n_past = 0;   // the next position
  size_t peak_bytes = 0;
  // The prompt tokens by position (-1 where a token came otherwise, by a decode step), kept when the session has
  // the tokenizer: a policy that cuts at text boundaries is told them, also for a prefix shared from another.
  std::vector<int32_t> text;
};

EngineSession::EngineSession(const Model& model, ThreadPool& pool, const SessionOptions& options, const Tokenizer* tok)
    : model_(model),
      tok_(tok),
      opts_(options),
      backend_(make_backend(options.device, pool)),
      forward_(model, *backend_, std::max({1, options.n_batch, options.n_step_tokens}), &pool) {
  if (options.n_ctx <= 0) fail("--ctx must be positive (got {})", options.n_ctx);
  if (options.n_batch <= 0) fail("--batch must be positive (got {})", options.n_batch);
  if (options.n_seq_max <= 0) fail("internal: a session for {} sequences", options.n_seq_max);
}

EngineSession::~EngineSession() = default;

SequenceId EngineSession::add_sequence(const std::string& kv_spec) {
  const ModelConfig& c = model_.config();
  return add_sequence(kv::make_kv_policy(kv_spec, c.n_layer, c.n_head_kv));
}

SequenceId EngineSession::add_sequence(std::unique_ptr<kv::KvPolicy> policy) {
  if (policy == nullptr) fail("internal: add_sequence without a policy");
  kv::KvPolicy& p = *policy;
  return add(p, std::move(policy));
}

SequenceId EngineSession::add_sequence(kv::KvPolicy& policy) { return add(policy, nullptr); }

void check_policy_runs_on(Device d, const kv::KvPolicy& policy) {
  if (policy.positions() == kv::KvPositions::InCache && d != Device::Cpu)
    fail("{} keeps positions within the cache (StreamingLLM), which runs on the cpu device only for now",
         policy.describe());
  if (policy.holds_tokens_beside_store() && d != Device::Cpu)
    fail("{} holds tokens beside the paged store (ShadowKV), which runs on the cpu device only for now",
         policy.describe());
}

void check_policy_compresses_chunks(const kv::KvPolicy& policy) {
  if (policy.reconstruction().chunk > 0)
    fail("{} scores the cache by reconstructing the whole prompt after prefill; it cannot cut between prefill chunks "
         "(--kv-prefill-compress)",
         policy.describe());
  if (policy.holds_tokens_beside_store())
    fail("{} factorizes the whole prompt's keys at its end; it cannot cut between prefill chunks "
         "(--kv-prefill-compress)",
         policy.describe());
}

void check_policy_serves(const kv::KvPolicy& policy) {
  if (policy.holds_tokens_beside_store())
    fail("{} holds tokens beside the paged store (ShadowKV), which the server's admission does not count yet; use it "
         "with run, eval or bench",
         policy.describe());
}

SequenceId EngineSession::add(kv::KvPolicy& policy, std::unique_ptr<kv::KvPolicy> owned) {
  const ModelConfig& c = model_.config();
  check_policy_runs_on(opts_.device, policy);
  kv::KvGeometry geo;
  geo.n_layer = c.n_layer;
  geo.n_head_kv = c.n_head_kv;
  geo.head_dim = c.head_dim;
  geo.format = policy.page_format();
  geo.sealed_format = policy.sealed_format();
  geo.n_recent_full_precision = policy.n_recent_full_precision();
  geo.key_summaries = policy.wants_key_summaries();
  if (policy.page_tokens() > 0) geo.page_tokens = policy.page_tokens();
  if (pages_ == nullptr) {
    size_t max_bytes = opts_.kv_max_bytes;
    if (max_bytes == 0) {
      // The full cache of n_ctx tokens in the open format (plus what one step appends past it, and KVzip's
      // reconstruction pass's chunk and instruction for a while), plus a slab of every format per head for the
      // transitions between them: the most one sequence may hold.
      const kv::KvReconstruction rec = policy.reconstruction();
      const size_t n_tokens_most = static_cast<size_t>(opts_.n_ctx) + static_cast<size_t>(opts_.n_step_tokens - 1) +
                                   (rec.chunk > 0 ? rec.chunk + rec.n_overlap + 256 : 0);
      const size_t pages_per_head = (n_tokens_most + geo.page_tokens - 1) / geo.page_tokens;
      max_bytes = (pages_per_head + 2 * 64) * c.n_layer * c.n_head_kv *
                  kv_page_bytes(geo.format, geo.page_tokens, geo.head_dim) * static_cast<size_t>(opts_.n_seq_max);
    }
    pages_ = std::make_unique<kv::KvPagePool>(geo.page_tokens, geo.head_dim, max_bytes, backend_->kv_memory());
  } else if (!seqs_.empty()) {
    for (const auto& s : seqs_)
      if (s != nullptr && s->kv->geometry().page_tokens != geo.page_tokens)
        fail("the sequences of one session share one KV page pool, so one page size: {} tokens, not {} ({})",
             s->kv->geometry().page_tokens, geo.page_tokens, policy.describe());
  }
  auto s = std::make_unique<Sequence>();
  s->owned = std::move(owned);
  s->policy = &policy;
  s->kv = std::make_unique<kv::KvSequence>(geo, *pages_);
  if (KvReadFilter* f = policy.read_filter()) f->set_host_pool(&forward_.host_pool());
  seqs_.push_back(std::move(s));
  return static_cast<SequenceId>(seqs_.size() - 1);
}

void EngineSession::remove_sequence(SequenceId id) {
  seq(id);  // checks the id
  seqs_[static_cast<size_t>(id)].reset();  // the KvSequence frees its pages
}

EngineSession::Sequence& EngineSession::seq(SequenceId id) {
  if (id < 0 || static_cast<size_t>(id) >= seqs_.size() || seqs_[static_cast<size_t>(id)] == nullptr)
    fail("internal: no sequence {} in the session", id);
  return *seqs_[static_cast<size_t>(id)];
}

const EngineSession::Sequence& EngineSession::seq(SequenceId id) const {
  return const_cast<EngineSession*>(this)->seq(id);
}

void EngineSession::reset_sequence(SequenceId id) {
  Sequence& s = seq(id);
  s.kv->clear();
  s.policy->reset();
  s.n_past = 0;
  s.peak_bytes = 0;
  s.text.clear();
}

void EngineSession::share_prefix(SequenceId dst, SequenceId src, int32_t n_tokens) {
  Sequence& d = seq(dst);
  const Sequence& from = seq(src);
  if (d.n_past != 0) fail("internal: sharing a prefix into a sequence at position {}", d.n_past);
  d.kv->share_prefix(*from.kv, n_tokens);
  d.n_past = n_tokens;
  d.text.assign(from.text.begin(), from.text.begin() + std::min<size_t>(from.text.size(), n_tokens));
  d.text.resize(static_cast<size_t>(n_tokens), -1);
  tell_text(d, 0, n_tokens);
  note_peak(d);
}

void EngineSession::tell_text(Sequence& s, int32_t from, int32_t n) {
  if (tok_ == nullptr || n == 0 || !s.policy->wants_text_breaks()) return;
  if (text_breaks_ == nullptr) text_breaks_ = std::make_unique<TextBreaks>(*tok_);
  std::vector<kv::TextBreak> breaks;
  text_breaks_->classify(std::span<const int32_t>(s.text).subspan(static_cast<size_t>(from), static_cast<size_t>(n)),
                         from > 0 ? s.text[static_cast<size_t>(from - 1)] : -1, breaks);
  s.policy->on_text(from, breaks);
}

kv::KvBytes EngineSession::bytes_of(const Sequence& s) {
  kv::KvBytes b = s.kv->bytes();
  if (const KvReadFilter* f = s.policy->read_filter(); f != nullptr) {
    b.beside_fast = f->bytes_fast();
    b.beside_cold = f->bytes_cold();
  }
  return b;
}

void EngineSession::note_peak(Sequence& s) { s.peak_bytes = std::max(s.peak_bytes, bytes_of(s).total()); }

void EngineSession::prefill(SequenceId id, std::span<const int32_t> tokens, const PrefillOptions& opts,
                            std::vector<float>& logits) {
  Sequence& s = seq(id);
  kv::KvPolicy& policy = *s.policy;
  kv::KvSequence& kv = *s.kv;
  kv::KvScores& scores = s.scores;
  const ModelConfig& c = model_.config();
  const int32_t n_vocab = c.n_vocab;
  const int32_t n = static_cast<int32_t>(tokens.size());
  const int32_t pos0 = s.n_past;
  for (int32_t p : opts.logit_positions)
    if (p < 0 || p >= n) fail("logit position {} is outside the prompt", p);
  logits.assign(opts.logit_positions.size() * static_cast<size_t>(n_vocab), 0.0f);
  if (n == 0) return;
  if (static_cast<int64_t>(pos0) + n > opts_.n_ctx) {
    if (pos0 == 0)
      fail("the prompt has {} tokens, more than the context of {} (--ctx); raise --ctx or shorten the prompt", n,
           opts_.n_ctx);
    fail("{} more tokens after the {} cached go past the context of {} (--ctx)", n, pos0, opts_.n_ctx);
  }
  const bool hooks = opts.hooks == PolicyHooks::On;
  const bool expire = opts.expiry == WindowExpiry::On;
  // The policy compresses the first m tokens; the rest are read after it, over the compressed cache.
  const int32_t m = opts.n_compressed > 0 ? opts.n_compressed : n;
  if (m > n) fail("internal: {} tokens to compress of a prompt of {}", m, n);
  const bool reconstruct_after = hooks && policy.reconstruction().chunk > 0;
  if (reconstruct_after && (pos0 != 0 || tok_ == nullptr))
    fail("internal: KVzip's reconstruction pass needs a whole prompt from position 0 and the tokenizer");
  const bool chunk_compress = hooks && opts.compress_chunks;
  if (chunk_compress) check_policy_compresses_chunks(policy);
  if (tok_ != nullptr) {
    s.text.resize(static_cast<size_t>(pos0), -1);
    s.text.insert(s.text.end(), tokens.begin(), tokens.end());
    if (hooks) tell_text(s, pos0, n);
  }

  kv.set_auto_seal(false);  // token selection runs on unpacked pages; packing follows it
  int32_t score_from = hooks ? policy.prefill_score_from(pos0 + m) : INT_MAX;
  if (opts.score_from != INT_MAX) {
    if (score_from != INT_MAX) fail("internal: the policy and an observer both gather prefill scores");
    score_from = opts.score_from;
  }
  scores.reduce = ScoreReduce::Sum;
  scores.first_pos = score_from;
  if (scores.wanted() || chunk_compress) scores.reset(c.n_layer, c.n_head_kv, opts_.n_ctx, opts_.n_ctx);
  scores.queries.first_pos = hooks ? policy.prefill_query_stats_from(pos0 + m) : INT_MAX;
  if (scores.queries.wanted()) scores.queries.reset(c.n_layer, c.n_head, c.head_dim);
  if (opts.prefix_at > 0 && (opts.prefix_at > m || chunk_compress || pos0 + opts.prefix_at > score_from ||
                             pos0 + opts.prefix_at > scores.queries.first_pos))
    fail("internal: a prefix of {} tokens to share past what the policy leaves untouched", opts.prefix_at);

  std::vector<int32_t> positions(static_cast<size_t>(opts_.n_batch));
  KvReadFilter* read_after = nullptr;  // what the chunks read past the policy's cut; null: the whole store
  std::vector<float> chunk_logits;
  std::vector<int32_t> rows;
  std::vector<size_t> dest;
  // Runs tokens [start, start + len) and copies out the logits asked for among them.
  auto run_chunk = [&](int32_t start, int32_t len) {
    for (int32_t i = 0; i < len; ++i) positions[static_cast<size_t>(i)] = pos0 + start + i;
    rows.clear();
    dest.clear();
    for (size_t j = 0; j < opts.logit_positions.size(); ++j)
      if (opts.logit_positions[j] >= start && opts.logit_positions[j] < start + len) {
        rows.push_back(opts.logit_positions[j] - start);
        dest.push_back(j);
      }
    chunk_logits.resize(rows.size() * static_cast<size_t>(n_vocab));
    forward_.run(kv, tokens.data() + start, positions.data(), len, rows, chunk_logits.data(), &scores,
                 kv::KvPositions::Original, read_after);
    note_peak(s);
    for (size_t r = 0; r < rows.size(); ++r)
      std::memcpy(logits.data() + dest[r] * n_vocab, chunk_logits.data() + r * n_vocab, n_vocab * sizeof(float));
  };
  for (int32_t start = 0, len = 0; start < m; start += len) {
    len = std::min(opts_.n_batch, m - start);
    if (start < opts.prefix_at && start + len > opts.prefix_at) len = opts.prefix_at - start;
    const bool compress_now = chunk_compress && start + len < m;
    if (chunk_compress) {
      // Each chunk is scored as if the prompt ended with it; the last as the prompt's end.
      scores.reset(c.n_layer, c.n_head_kv, opts_.n_ctx, kv.n_tokens_max() + len);
      scores.first_pos = policy.prefill_score_from(pos0 + (compress_now ? start + len : m));
    }
    run_chunk(start, len);
    if (compress_now) policy.after_prefill_chunk(kv, scores);
    // Sliding-window expiry renumbers slots, so it waits while scores for the policy are still being gathered.
    const bool scores_pending = scores.wanted() && pos0 + start + len > scores.first_pos && !compress_now;
    if (expire && !scores_pending) kv_expire_window(c, kv, policy, pos0 + start + len);
    if (start + len == opts.prefix_at && opts.on_prefix) opts.on_prefix();
    if (opts.progress) opts.progress(start + len, n);
  }
  if (hooks) {
    if (reconstruct_after) reconstruct(s, tokens, m);
    policy.after_prefill(kv, scores);
  }
  if (opts.on_scores) opts.on_scores(kv, scores);
  if (expire) kv_expire_window(c, kv, policy, pos0 + m);
  // The rest of the prompt (a question asked after the context was compressed): read, never scored; through the
  // read filter when it holds tokens the store no longer has.
  scores.first_pos = INT_MAX;
  scores.queries.first_pos = INT_MAX;
  if (hooks && policy.holds_tokens_beside_store()) read_after = policy.read_filter();
  for (int32_t start = m; start < n; start += opts_.n_batch) {
    const int32_t len = std::min(opts_.n_batch, n - start);
    run_chunk(start, len);
    if (expire) kv_expire_window(c, kv, policy, pos0 + start + len);
    if (opts.progress) opts.progress(start + len, n);
  }
  kv.seal_full_pages();
  kv.set_auto_seal(true);
  s.n_past = pos0 + n;
}

void EngineSession::reconstruct(Sequence& s, std::span<const int32_t> prompt, int32_t m) {
  const ModelConfig& c = model_.config();
  kv::KvPolicy& policy = *s.policy;
  kv::KvScores& scores = s.scores;
  const kv::KvReconstruction rec = policy.reconstruction();
  const std::vector<int32_t> first = tok_->encode(rec.first_instruction, false, false);
  const std::vector<int32_t> next = tok_->encode(rec.next_instruction, false, false);
  // The text is repeated, not the bos that starts it.
  const int32_t from = (m > 1 && prompt[0] == tok_->bos()) ? 1 : 0;
  const int32_t n_extra_max = static_cast<int32_t>(std::max(first.size(), next.size() + rec.n_overlap)) + rec.chunk;
  // Every reconstruction query votes, each slot keeping the most any of them paid it.
  scores.reset(c.n_layer, c.n_head_kv, m + n_extra_max, m + n_extra_max);
  scores.first_pos = m;
  scores.reduce = ScoreReduce::Max;
  scores.queries.first_pos = INT_MAX;
  std::vector<int32_t> ids, positions;
  std::vector<int32_t> gone;
  for (int32_t c0 = from; c0 < m; c0 += rec.chunk) {
    const int32_t c1 = std::min(m, c0 + rec.chunk);
    if (c0 == from) {
      ids = first;
    } else {
      ids = next;
      ids.insert(ids.end(), prompt.begin() + std::max(from, c0 - rec.n_overlap), prompt.begin() + c0);
    }
    ids.insert(ids.end(), prompt.begin() + c0, prompt.begin() + c1);
    const int32_t n_ids = static_cast<int32_t>(ids.size());
    positions.resize(static_cast<size_t>(n_ids));
    for (int32_t i = 0; i < n_ids; ++i) positions[static_cast<size_t>(i)] = m + i;
    for (int32_t s0 = 0; s0 < n_ids; s0 += opts_.n_batch) {
      const int32_t len = std::min(opts_.n_batch, n_ids - s0);
      forward_.run(*s.kv, ids.data() + s0, positions.data() + s0, len, {}, nullptr, &scores);
      note_peak(s);
    }
    // The reconstruction's own tokens leave the cache: they sit after every prompt slot (positions >= m).
    for (int32_t l = 0; l < c.n_layer; ++l)
      for (int32_t g = 0; g < c.n_head_kv; ++g) {
        const kv::KvHeadCache& h = s.kv->head(l, g);
        const int32_t n_before = h.n_tokens();
        gone.clear();
        for (int32_t i = n_before; i-- > 0 && h.positions[static_cast<size_t>(i)] >= m;) gone.push_back(i);
        std::reverse(gone.begin(), gone.end());
        s.kv->remove_slots(l, g, gone);
        policy.on_slots_removed(l, g, n_before, gone);
      }
  }
}

void EngineSession::step(std::span<const SequenceStep> steps, float* logits, WindowExpiry expiry) {
  const ModelConfig& c = model_.config();
  for (size_t i = 0; i < steps.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (steps[i].seq == steps[j].seq) fail("internal: sequence {} twice in one decode step", steps[i].seq);
  const size_t part = static_cast<size_t>(opts_.batch_invariant ? backend_->batch_invariant_rows() : forward_.n_batch());
  std::vector<ForwardSegment> segs;
  std::vector<int32_t> ids, positions, rows;
  for (size_t p0 = 0; p0 < steps.size(); p0 += part) {
    const size_t p1 = std::min(steps.size(), p0 + part);
    const size_t np = p1 - p0;
    segs.assign(np, {});
    ids.resize(np);
    positions.resize(np);
    rows.resize(np);
    for (size_t i = 0; i < np; ++i) {
      Sequence& s = seq(steps[p0 + i].seq);
      kv::KvPolicy& policy = *s.policy;
      ids[i] = steps[p0 + i].token;
      positions[i] = s.n_past;
      rows[i] = static_cast<int32_t>(i);
      if (ids[i] < 0 || ids[i] >= c.n_vocab) fail("token {} is outside the vocabulary", ids[i]);
      if (policy.wants_decode_scores()) {
        s.scores.reset(c.n_layer, c.n_head_kv, opts_.n_ctx, s.kv->n_tokens_max() + 1);
        s.scores.first_pos = s.n_past;
      } else {
        s.scores.first_pos = INT_MAX;
      }
      // Decode reads what the policy's read filter (Quest) chooses; prefill read everything.
      segs[i] = ForwardSegment{s.kv.get(), &ids[i], &positions[i], 1, &s.scores, policy.positions(),
                               policy.read_filter()};
    }
    forward_.run(segs, rows, logits + p0 * static_cast<size_t>(c.n_vocab));
    for (size_t i = 0; i < np; ++i) {
      Sequence& s = seq(steps[p0 + i].seq);
      note_peak(s);
      s.policy->after_decode_step(*s.kv, s.scores);
      if (expiry == WindowExpiry::On) kv_expire_window(c, *s.kv, *s.policy, positions[i] + 1, /*decode_step=*/true);
      s.n_past = positions[i] + 1;
    }
  }
}

void EngineSession::extend(SequenceId id, const int32_t* tokens, int32_t n, const std::vector<int32_t>& logit_rows,
                           float* logits, kv::KvScores* scores, KvReadFilter* read) {
  Sequence& s = seq(id);
  if (n > forward_.n_batch()) fail("internal: {} tokens in one forward of at most {}", n, forward_.n_batch());
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) positions[static_cast<size_t>(i)] = s.n_past + i;
  forward_.run(*s.kv, tokens, positions.data(), n, logit_rows, logits, scores, kv::KvPositions::Original, read);
  note_peak(s);
  s.n_past += n;
}

void EngineSession::truncate(SequenceId id, int32_t from_pos) {
  Sequence& s = seq(id);
  const kv::KvGeometry& geo = s.kv->geometry();
  std::vector<int32_t> slots;
  for (int32_t il = 0; il < geo.n_layer; ++il)
    for (int32_t g = 0; g < geo.n_head_kv; ++g) {
      const kv::KvHeadCache& h = s.kv->head(il, g);
      const auto first = std::lower_bound(h.positions.begin(), h.positions.end(), from_pos) - h.positions.begin();
      slots.clear();
      for (int32_t i = static_cast<int32_t>(first); i < h.n_tokens(); ++i) slots.push_back(i);
      if (!slots.empty()) s.kv->remove_slots(il, g, slots);
    }
  s.n_past = from_pos;
}

void EngineSession::expire_window(SequenceId id, int32_t next_pos) {
  Sequence& s = seq(id);
  kv_expire_window(model_.config(), *s.kv, *s.policy, next_pos, /*decode_step=*/true);
}

bool EngineSession::context_has_room(SequenceId id) const {
  const Sequence& s = seq(id);
  if (s.policy->positions() == kv::KvPositions::InCache) return s.kv->n_tokens_max() < opts_.n_ctx;
  return s.n_past < opts_.n_ctx;
}

kv::KvSequence& EngineSession::sequence(SequenceId id) { return *seq(id).kv; }
const kv::KvSequence& EngineSession::sequence(SequenceId id) const { return *seq(id).kv; }
kv::KvPolicy& EngineSession::policy(SequenceId id) { return *seq(id).policy; }
const kv::KvPolicy& EngineSession::policy(SequenceId id) const { return *seq(id).policy; }
int32_t EngineSession::position(SequenceId id) const { return seq(id).n_past; }
kv::KvBytes EngineSession::bytes(SequenceId id) const { return bytes_of(seq(id)); }
size_t EngineSession::peak_bytes(SequenceId id) const { return seq(id).peak_bytes; }

int32_t EngineSession::n_sequences() const {
  return static_cast<int32_t>(std::count_if(seqs_.begin(), seqs_.end(), [](const auto& s) { return s != nullptr; }));
}

const kv::KvPagePool& EngineSession::pages() const {
  if (pages_ == nullptr) fail("internal: the session's page pool exists once a sequence is added");
  return *pages_;
}

}  // namespace longctx
