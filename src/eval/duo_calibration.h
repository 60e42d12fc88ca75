// The forward-only DuoAttention calibration ("DuoAttention: Efficient Long-Context LLM Inference with Retrieval and
// Streaming Heads"; the measure is kv/duo_head_scores.h): passkey prompts from `longctx eval`'s own case generator,
// each prefilled once into a whole f16 cache; then, once with the whole cache and once per (layer, kv-head) with only
// that head reading sinks + a recent window, the answer's tokens are run teacher-forced over the cached prompt and
// their logits compared. A forward appends the span's keys to the cache, so they are removed after every run and
// the prompt's cache serves all the runs unchanged.
//
// How one head is made streaming: through the forward's read filter (KvReadFilter), which points that head's
// attention at its sink rows and its recent pages in place, rather than by evicting: eviction would change the store
// and need a copy of the whole prompt's cache per head (n_layer x n_head_kv copies), while the filter costs nothing
// and leaves every other head reading exactly what the reference run read. The window is page-granular (see
// streaming_head_view); only the answer span reads through it, as with the heads policy, which keeps the whole
// cache through prefill and evicts after it.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/thread_pool.h"
#include "eval/eval_tasks.h"
#include "kv/duo_head_scores.h"
#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace longctx::eval {

struct DuoCalibrationParams {
  Task task = Task::Passkey;   // passkey (its own filler) or needle/multikey (over the haystack)
  int32_t length = 2048;       // context tokens of each prompt (about; the wrapping adds a few)
  int32_t n_prompts = 4;       // at depths spread over [0.1, 0.9]
  uint64_t seed = 1;           // prompt i uses seed + i
  int32_t sink = 4;            // what a streaming head keeps: the heads policy's defaults
  int32_t window = 256;
  int32_t n_batch = 256;       // prefill chunk
  Device device = Device::Cpu; // where the model runs
};

// Throws Error unless the task's cases ask for one value (passkey, needle, multikey, kvret).
void check_duo_task(Task t);

// Called after every run: (runs done, runs in all) where a prompt counts 1 + n_layer * n_head_kv runs.
using DuoProgress = std::function<void(int64_t done, int64_t total)>;

// Runs the measure. haystack: the sentences the needle tasks hide their facts in (passkey uses its own filler and
// ignores it). Throws Error for a task without a single-number answer, or a length outside the model's context.
kv::DuoHeadScores duo_calibrate(const Model& model, const Tokenizer& tok, ThreadPool& pool,
                                const DuoCalibrationParams& p, const std::vector<std::string>& haystack,
                                const DuoProgress& progress = {});

// One prompt's tokens: the prompt as `longctx eval` writes it (chat or completion, the answer's first words
// included) followed by the expected answer; the answer's tokens are those from answer_begin on.
struct DuoPrompt {
  std::vector<int32_t> tokens;
  int32_t answer_begin = 0;
};
DuoPrompt duo_prompt(const Model& model, const Tokenizer& tok, const DuoCalibrationParams& p, int32_t index,
                     const std::vector<std::string>& haystack);

}  // namespace longctx::eval
