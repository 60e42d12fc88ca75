// `longctx stream-ppl`: perplexity of one long text read token by token under KV policies, window by window, with
// the memory each holds as it goes: the measure of StreamingLLM ("Efficient Streaming Language Models with Attention
// Sinks", its language-modeling figure), where a model streams past its trained context with a bounded cache and
// its perplexity stays flat, while the full cache must stop at the context.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kv/policy.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx::eval {

// One window of the stream: the tokens at positions [first, end) of the text, and the memory at its end.
struct StreamWindow {
  int32_t first = 0, end = 0;
  int32_t n_scored = 0;
  double nll_sum = 0;
  double perplexity() const;
  size_t kv_bytes = 0;       // held by the sequence (pages + metadata)
  size_t kv_pool_bytes = 0;  // reserved by the page allocator
  size_t rss_bytes = 0;      // the process's resident set, 0 where /proc is missing
  int32_t n_cached = 0;      // tokens held by the most populated (layer, kv-head)
};

enum class StreamEnd {
  Done,         // every token of the stream was scored
  ContextFull,  // a policy of original positions reached the context (--ctx) and stopped there
};

struct StreamRun {
  std::string policy;  // the spec as given
  std::string describe;
  kv::KvPositions positions = kv::KvPositions::Original;
  std::vector<StreamWindow> windows;  // the last one may be partial
  StreamEnd end = StreamEnd::Done;
  int32_t n_scored = 0;
  double nll_sum = 0;
  double seconds = 0;
};

// Reads tokens[0, n_prefix) as a prompt, then scores every later token (teacher-forced, one step at a time) under
// the policy, splitting the scored positions into windows of `window` tokens. A policy of original positions stops
// cleanly at n_ctx (StreamEnd::ContextFull); one of in-cache positions goes through. Throws Error for a bad spec,
// a prefix that does not fit n_ctx, or a cache that fills the context.
// on_window, when given, hears each window as it closes.
StreamRun stream_perplexity(const Model& model, const Tokenizer& tok, ThreadPool& pool,
                            const std::vector<int32_t>& tokens, int32_t n_prefix, const std::string& spec,
                            int32_t n_ctx, int32_t window,
                            const std::function<void(const StreamRun&, const StreamWindow&)>& on_window = {});

// The reference a stream is read against, since a text's own difficulty changes along it: each window scored by the
// full cache afresh, after the n_context tokens before it (fewer at the text's start), in one batched prefill per
// window (teacher forcing gives the decode steps' logits). It needs n_context + window <= n_ctx, not the stream's
// length. describe: "full, afresh per window".
StreamRun windowed_full_reference(const Model& model, ThreadPool& pool, const std::vector<int32_t>& tokens,
                                  int32_t n_prefix, int32_t n_ctx, int32_t window, int32_t n_context,
                                  const std::function<void(const StreamRun&, const StreamWindow&)>& on_window = {});

struct StreamPplOptions {
  std::string model;
  std::string text = "data/kjv.txt";
  std::vector<std::string> kv_specs{"streaming", "full"};
  int32_t n_tokens = 32768;  // positions of the text read, prefix included
  int32_t n_prefix = 64;     // read as a prompt before scoring starts
  int32_t window = 4096;
  int32_t n_ctx = 0;         // 0: the model's trained context
  int32_t n_threads = 0;     // 0: every core
  int32_t n_reference_context = 0;  // > 0: also windowed_full_reference with this many tokens before each window
  std::string out;           // JSON of the runs; empty: none
};

// Runs every policy over the same tokens and returns the Markdown tables (perplexity per window; memory at each
// window's end); progress goes to stderr.
std::string run_stream_ppl(const StreamPplOptions& o);

// The process's resident set in bytes (/proc/self/statm), 0 where unknown.
size_t process_rss_bytes();

}  // namespace longctx::eval
