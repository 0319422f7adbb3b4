#include "generation_flags.h"

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "xcpipe/base/exit_codes.h"
#include "xcpipe/base/files.h"
#include "xcpipe/beam/beam_search.h"
#include "xcpipe/tokenizer/utf8.h"

namespace xcpipe::cli {

void AddGenerationFlags(CLI::App& sub, GenerationFlags& f) {
  auto* prompt = sub.add_option("--prompt", f.prompt, "the prompt text; put <ImageHere> where each image goes");
  auto* file = sub.add_option("--prompt-file", f.prompt_file,
                              "read the prompt from a file (.json: a JSON string or list of strings; else plain text)");
  prompt->excludes(file);
  sub.add_option("--image", f.images, "an image file (PNG or JPEG); repeat for several, in placeholder order");
  sub.add_option("--max-new-tokens", f.max_new_tokens, "tokens to generate at most")->capture_default_str();
  auto* greedy = sub.add_flag("--greedy", f.greedy, "greedy decoding (the default unless sampling flags are given)");
  auto* t = sub.add_option("--temperature", f.temperature, "sampling temperature");
  auto* p = sub.add_option("--top-p", f.top_p, "nucleus sampling threshold");
  auto* k = sub.add_option("--top-k", f.top_k, "sample from the k most likely tokens");
  auto* s = sub.add_option("--seed", f.seed, "random seed for sampling");
  for (auto* o : {t, p, k, s}) o->excludes(greedy);
  sub.add_option("--repetition-penalty", f.repetition_penalty, "Hugging Face repetition penalty (1 = off)")
      ->capture_default_str();
  sub.add_option("--min-tokens", f.min_tokens,
                 "generate at least this many tokens before an end-of-answer token may end the answer "
                 "(the stop ids are masked until then; at most --max-new-tokens)")
      ->capture_default_str();
  sub.add_flag("--ignore-eos", f.ignore_eos,
               "keep generating past an end-of-answer token, to exactly --max-new-tokens tokens (for benchmarks; "
               "the text is still cut at the end of the turn)");
  sub.add_option("--num-beams", f.num_beams,
                 "beam search with this many beams (Hugging Face semantics, as the official chat() runs it; "
                 "1 = none); needs greedy decoding, and the answer arrives whole at the end")
      ->capture_default_str();
  sub.add_option("--length-penalty", f.length_penalty, "beam search: a hypothesis' score is divided by length^this")
      ->capture_default_str();
  sub.add_option("--early-stopping", f.early_stopping,
                 "beam search: false (stop when no running beam can win), true (stop once --num-beams "
                 "hypotheses are finished) or never")
      ->capture_default_str();
  sub.add_option("--min-length", f.min_length,
                 "beam search: EOS is masked while the prompt's penalty context plus the new tokens are shorter "
                 "(Hugging Face min_length)")
      ->capture_default_str();
  sub.add_flag("--official-defaults", f.official_defaults,
               "use the model version's official chat() generation settings (1.0: 5 beams, repetition penalty 1.5, "
               "min_length 1, 500 new tokens; 2.x: sampling with top_p 0.8, repetition penalty 1.005, 1024 new "
               "tokens); flags given explicitly still win");
  sub.add_flag("--json", f.json, R"(print {"token_ids": [...], "text": ..., "ttft_ms": ..., "tokens_per_s": ...})");
}

StatusOr<coordinator::GenerateRequest> BuildRequest(const GenerationFlags& f, const CLI::App& sub) {
  coordinator::GenerateRequest r;
  if (!f.prompt_file.empty()) {
    XCPIPE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(f.prompt_file, 16 << 20));
    if (f.prompt_file.size() > 5 && f.prompt_file.substr(f.prompt_file.size() - 5) == ".json") {
      r.prompt_json = text;
    } else {
      // Checked here: the JSON encoding below would otherwise turn bad bytes into U+FFFD.
      if (auto bad = tokenizer::FindUtf8Error(text)) {
        return InvalidArgumentError("--prompt-file " + f.prompt_file + " is not valid UTF-8 at byte offset " +
                                    std::to_string(bad->offset) + " (" + bad->reason + "); expected UTF-8 text");
      }
      r.prompt_json = nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
  } else if (sub.count("--prompt") > 0) {
    if (auto bad = tokenizer::FindUtf8Error(f.prompt)) {
      return InvalidArgumentError("--prompt is not valid UTF-8 at byte offset " + std::to_string(bad->offset) + " (" +
                                  bad->reason + "); expected UTF-8 text");
    }
    r.prompt_json = nlohmann::json(f.prompt).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  } else {
    return InvalidArgumentError("give the prompt with --prompt TEXT or --prompt-file FILE");
  }
  for (const auto& path : f.images) {
    auto bytes = ReadFileToString(path, 64 << 20);
    if (!bytes.ok()) return bytes.status().WithContext("--image");
    r.images.push_back(std::move(bytes).value());
  }
  r.max_new_tokens = f.max_new_tokens;
  const bool sampling =
      sub.count("--temperature") + sub.count("--top-p") + sub.count("--top-k") + sub.count("--seed") > 0;
  r.sampling.greedy = !sampling;
  r.sampling.temperature = f.temperature;
  r.sampling.top_p = f.top_p;
  r.sampling.top_k = f.top_k;
  r.sampling.seed = f.seed;
  r.sampling.repetition_penalty = f.repetition_penalty;
  if (f.min_tokens > f.max_new_tokens) {
    return InvalidArgumentError("--min-tokens " + std::to_string(f.min_tokens) + " is more than --max-new-tokens " +
                                std::to_string(f.max_new_tokens) + "; expected at most the maximum");
  }
  r.sampling.min_new_tokens = f.min_tokens;
  r.sampling.ignore_eos = f.ignore_eos;
  if (f.num_beams < 1 || f.num_beams > 64) {
    return InvalidArgumentError("--num-beams " + std::to_string(f.num_beams) + " is out of range; expected 1..64");
  }
  if (f.num_beams > 1 && sampling) {
    return InvalidArgumentError("--num-beams " + std::to_string(f.num_beams) +
                                " cannot be combined with sampling flags (--temperature, --top-p, --top-k, --seed)");
  }
  r.sampling.num_beams = f.num_beams;
  r.sampling.length_penalty = f.length_penalty;
  auto early = beam::ParseEarlyStopping(f.early_stopping);
  if (!early.ok()) return early.status().WithContext("--early-stopping");
  r.sampling.early_stopping = static_cast<int>(*early);
  r.sampling.min_length = f.min_length;
  return r;
}

void ApplyOfficialDefaults(const GenerationFlags& f, const CLI::App& sub, checkpoint::ModelArch arch,
                           coordinator::GenerateRequest& r) {
  if (!f.official_defaults) return;
  const coordinator::OfficialGeneration g = coordinator::OfficialChatGeneration(arch);
  auto given = [&](const char* flag) { return sub.count(flag) > 0; };
  const bool sampling_given = given("--temperature") || given("--top-p") || given("--top-k") || given("--seed") ||
                              given("--greedy") || given("--num-beams");
  if (!sampling_given) {
    r.sampling.greedy = g.sampling.greedy;
    r.sampling.temperature = g.sampling.temperature;
    r.sampling.top_p = g.sampling.top_p;
    r.sampling.top_k = g.sampling.top_k;
    r.sampling.num_beams = g.sampling.num_beams;
  }
  if (!given("--repetition-penalty")) r.sampling.repetition_penalty = g.sampling.repetition_penalty;
  if (!given("--min-length") && r.sampling.num_beams > 1) r.sampling.min_length = g.sampling.min_length;
  if (!given("--length-penalty")) r.sampling.length_penalty = g.sampling.length_penalty;
  if (!given("--max-new-tokens")) r.max_new_tokens = static_cast<uint32_t>(g.max_new_tokens);
}

int PrintResult(const GenerationFlags& f, const coordinator::GenerateResult& result) {
  if (!result.error.empty()) {
    std::fprintf(stderr, "request failed: %s\n", result.error.c_str());
    if (f.json) std::cout << nlohmann::json{{"error", result.error}}.dump() << "\n";
    return result.error.rfind("InvalidArgument", 0) == 0 || result.error.rfind("ResourceExhausted", 0) == 0
               ? kExitInvalidInput
               : kExitFailure;
  }
  if (f.json) {
    nlohmann::json out;
    if (result.token_ids.size() == 1) {
      out["token_ids"] = result.token_ids[0];
      out["text"] = result.texts[0];
    } else {
      out["token_ids"] = result.token_ids;
      out["text"] = result.texts;
    }
    out["ttft_ms"] = result.ttft_ms;
    out["tokens_per_s"] = result.tokens_per_s;
    out["finish_reason"] = result.finish_reasons.size() == 1 ? nlohmann::json(result.finish_reasons[0])
                                                             : nlohmann::json(result.finish_reasons);
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << "\n";
    std::fprintf(stderr, "[%zu token(s), first after %.1f ms, %.1f tokens/s]\n",
                 result.token_ids.empty() ? 0 : result.token_ids[0].size(), result.ttft_ms, result.tokens_per_s);
  }
  return kExitOk;
}

}  // namespace xcpipe::cli
