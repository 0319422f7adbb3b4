#include "xcpipe/coordinator/edge.h"

#include "xcpipe/beam/beam_search.h"

#include <algorithm>
#include <cmath>

#include "xcpipe/image/decode.h"
#include "xcpipe/tokenizer/prompt_validation.h"

namespace xcpipe::coordinator {

namespace fs = std::filesystem;

tokenizer::ChatVersion ChatVersionFor(checkpoint::ModelArch arch) {
  switch (arch) {
    case checkpoint::ModelArch::kIxc1:
      return tokenizer::ChatVersion::kIxc1;
    case checkpoint::ModelArch::kIxc2Vl:
      return tokenizer::ChatVersion::kIxc2Vl;
    case checkpoint::ModelArch::kIxc2_4khd:
      return tokenizer::ChatVersion::kIxc2_4khd;
    case checkpoint::ModelArch::kIxc2_5:
      return tokenizer::ChatVersion::kIxc2_5;
  }
  return tokenizer::ChatVersion::kIxc2Vl;
}

StatusOr<fs::path> FindTokenizer(const fs::path& model_dir) {
  const std::vector<fs::path> candidates = {model_dir / "tokenizer.model",
                                            model_dir / ".." / "tokenizer" / "tokenizer.model",
                                            model_dir / ".." / ".." / "tokenizer" / "tokenizer.model"};
  std::string tried;
  for (const auto& c : candidates) {
    std::error_code ec;
    if (fs::is_regular_file(c, ec)) return fs::weakly_canonical(c, ec);
    tried += (tried.empty() ? "" : ", ") + c.string();
  }
  return NotFoundError("no tokenizer.model for model " + model_dir.string() + " (tried " + tried +
                       "); pass --tokenizer");
}

StatusOr<std::unique_ptr<RequestPreparer>> RequestPreparer::Create(const fs::path& model_dir,
                                                                   const fs::path& tokenizer_model, EdgeLimits limits) {
  std::unique_ptr<RequestPreparer> p(new RequestPreparer());
  p->limits_ = limits;
  auto described = checkpoint::DescribeCheckpoint(model_dir);
  if (!described.ok()) return described.status();
  p->spec_ = described->spec;
  auto image_spec = image::DetectModelImageSpec(model_dir);
  if (!image_spec.ok()) return image_spec.status();
  p->image_spec_ = *image_spec;
  auto tok = tokenizer::Tokenizer::LoadFromFile(tokenizer_model);
  if (!tok.ok()) return tok.status();
  p->tokenizer_ = std::move(tok).value();
  p->version_ = ChatVersionFor(p->spec_.arch);
  auto stops = tokenizer::StopTokenIds(*p->tokenizer_, p->version_);
  if (!stops.ok()) return stops.status();
  for (auto id : *stops) p->stop_ids_.push_back(id);
  // Two queries that share no first character: what their prompts share is the template.
  std::vector<std::vector<int64_t>> built;
  for (const char* query : {"0", "Z"}) {
    tokenizer::ChatRequest req;
    req.query = query;
    auto chat = tokenizer::BuildChatPrompt(*p->tokenizer_, p->version_, req);
    if (!chat.ok()) break;
    auto ids = chat->ExpandedIds({}, -1);
    if (!ids.ok()) break;
    built.push_back(std::move(*ids));
  }
  if (built.size() == 2) {
    size_t n = 0;
    while (n < built[0].size() && n < built[1].size() && built[0][n] == built[1][n] && built[0][n] >= 0) ++n;
    if (n >= kMinSharedHead) p->shared_head_.assign(built[0].begin(), built[0].begin() + static_cast<long>(n));
  }
  return p;
}

Status RequestPreparer::ValidateGeneration(int64_t max_new_tokens, const Sampling& s) const {
  if (max_new_tokens < 1 || max_new_tokens > limits_.max_new_tokens) {
    return InvalidArgumentError("max_new_tokens " + std::to_string(max_new_tokens) + " is out of range; expected 1.." +
                                std::to_string(limits_.max_new_tokens));
  }
  if (!s.greedy) {
    if (!std::isfinite(s.temperature) || s.temperature <= 0 || s.temperature > 100) {
      return InvalidArgumentError("temperature " + std::to_string(s.temperature) +
                                  " is out of range; expected 0 < t <= 100");
    }
    if (!std::isfinite(s.top_p) || s.top_p <= 0 || s.top_p > 1) {
      return InvalidArgumentError("top_p " + std::to_string(s.top_p) + " is out of range; expected 0 < p <= 1");
    }
  }
  if (!std::isfinite(s.repetition_penalty) || s.repetition_penalty <= 0 || s.repetition_penalty > 10) {
    return InvalidArgumentError("repetition_penalty " + std::to_string(s.repetition_penalty) +
                                " is out of range; expected 0 < r <= 10 (1 = off)");
  }
  if (s.min_new_tokens < 0 || s.min_new_tokens > max_new_tokens) {
    return InvalidArgumentError("min_tokens " + std::to_string(s.min_new_tokens) + " is out of range; expected 0.." +
                                std::to_string(max_new_tokens) + " (at most max_new_tokens)");
  }
  if (s.num_beams < 1 || s.num_beams > beam::kMaxBeams) {
    return InvalidArgumentError("num_beams " + std::to_string(s.num_beams) + " is out of range; expected 1.." +
                                std::to_string(beam::kMaxBeams) + " (1 = no beam search)");
  }
  if (s.beams()) {
    if (!s.greedy) {
      return InvalidArgumentError("num_beams " + std::to_string(s.num_beams) +
                                  " with sampling is not supported; beam search needs greedy decoding "
                                  "(temperature 0 / do_sample false)");
    }
    if (!std::isfinite(s.length_penalty) || std::abs(s.length_penalty) > 100) {
      return InvalidArgumentError("length_penalty " + std::to_string(s.length_penalty) +
                                  " is out of range; expected -100..100 (1 = HF's default)");
    }
    if (s.early_stopping < 0 || s.early_stopping > 2) {
      return InvalidArgumentError("early_stopping " + std::to_string(s.early_stopping) +
                                  " is out of range; expected 0 (false), 1 (true) or 2 (never)");
    }
  }
  if (s.min_length < 0 || s.min_length > limits_.max_prompt_tokens + max_new_tokens) {
    return InvalidArgumentError("min_length " + std::to_string(s.min_length) + " is out of range; expected 0.." +
                                std::to_string(limits_.max_prompt_tokens + max_new_tokens));
  }
  if (s.min_length > 0 && !s.beams()) {
    return InvalidArgumentError("min_length is a beam-search setting (num_beams > 1); use min_tokens otherwise");
  }
  return OkStatus();
}

OfficialGeneration OfficialChatGeneration(checkpoint::ModelArch arch) {
  OfficialGeneration g;
  if (arch == checkpoint::ModelArch::kIxc1) {
    // chat(): generate(num_beams=5, do_sample=False, min_length=1, repetition_penalty=1.5,
    // max_new_tokens=500, length_penalty=1.0).
    g.sampling.num_beams = 5;
    g.sampling.repetition_penalty = 1.5;
    g.sampling.min_length = 1;
    g.max_new_tokens = 500;
  } else {
    // 2.x chat(): do_sample=True, num_beams=1, temperature=1.0, top_p=0.8, repetition_penalty=1.005,
    // max_new_tokens=1024.
    g.sampling.greedy = false;
    g.sampling.temperature = 1.0;
    g.sampling.top_p = 0.8;
    g.sampling.repetition_penalty = 1.005;
    g.max_new_tokens = 1024;
  }
  return g;
}

std::string_view FinishReasonAfter(const std::vector<int64_t>& generated, int64_t max_new,
                                   const std::vector<int64_t>& stop_ids, const Sampling& sampling) {
  if (generated.empty()) return {};
  const int64_t n = static_cast<int64_t>(generated.size());
  const bool stop_id = std::find(stop_ids.begin(), stop_ids.end(), generated.back()) != stop_ids.end();
  if (stop_id && !sampling.ignore_eos && n > sampling.min_new_tokens) return "stop";
  if (n >= max_new) return "length";
  return {};
}

StatusOr<std::vector<PreparedPrompt>> RequestPreparer::Prepare(const std::string& prompt_json,
                                                               const std::vector<std::string>& encoded_images) const {
  tokenizer::PromptLimits plimits;
  plimits.max_prompt_bytes = limits_.max_prompt_bytes;
  plimits.max_prompts = static_cast<size_t>(limits_.max_prompts);
  auto prompts = tokenizer::ParsePromptJsonText(prompt_json, plimits);
  if (!prompts.ok()) return prompts.status();
  if (static_cast<int>(encoded_images.size()) > limits_.max_images) {
    return InvalidArgumentError(std::to_string(encoded_images.size()) + " images sent; at most " +
                                std::to_string(limits_.max_images) + " are allowed per request");
  }
  // Images go to prompts in placeholder order; a single prompt takes them all.
  std::vector<int> per_prompt(prompts->size(), 0);
  if (prompts->size() == 1) {
    per_prompt[0] = static_cast<int>(encoded_images.size());
  } else {
    int total = 0;
    for (size_t i = 0; i < prompts->size(); ++i)
      total += per_prompt[i] = tokenizer::CountImagePlaceholders((*prompts)[i]);
    if (total != static_cast<int>(encoded_images.size())) {
      return InvalidArgumentError("the prompts hold " + std::to_string(total) + " <ImageHere> placeholders but " +
                                  std::to_string(encoded_images.size()) +
                                  " images were sent; expected one image per placeholder");
    }
  }
  if (Status st = tokenizer::ValidatePrompts(*prompts, per_prompt, version_, plimits); !st.ok()) return st;

  std::vector<PreparedPrompt> out;
  size_t next_image = 0;
  for (size_t i = 0; i < prompts->size(); ++i) {
    PreparedPrompt p;
    std::vector<int64_t> rows;
    for (int k = 0; k < per_prompt[i]; ++k, ++next_image) {
      const std::string& bytes = encoded_images[next_image];
      const std::string label = "image " + std::to_string(next_image + 1);
      if (bytes.size() > limits_.max_image_bytes) {
        return InvalidArgumentError(label + " is " + std::to_string(bytes.size()) + " bytes; at most " +
                                    std::to_string(limits_.max_image_bytes) + " are allowed");
      }
      auto rgb = image::DecodeImage(bytes);
      if (!rgb.ok()) return rgb.status().WithContext(label);
      auto pre = image::PreprocessForModel(*rgb, image_spec_);
      if (!pre.ok()) return pre.status().WithContext(label);
      PreparedImage img;
      img.channels = pre->pixel_values.channels;
      img.height = pre->pixel_values.height;
      img.width = pre->pixel_values.width;
      img.grid_h = pre->grid_h;
      img.grid_w = pre->grid_w;
      img.rows = spec_.ImageTokens(img.grid_h, img.grid_w);
      img.pixels = std::move(pre->pixel_values.data);
      rows.push_back(img.rows);
      p.images.push_back(std::move(img));
    }
    tokenizer::ChatRequest req;
    req.query = (*prompts)[i];
    req.num_images = per_prompt[i];
    auto chat = tokenizer::BuildChatPrompt(*tokenizer_, version_, req);
    if (!chat.ok()) return chat.status();
    auto ids = chat->ExpandedIds(rows, -1);
    if (!ids.ok()) return ids.status();
    if (static_cast<int64_t>(ids->size()) > limits_.max_prompt_tokens) {
      return InvalidArgumentError("prompt " + std::to_string(i + 1) + " is " + std::to_string(ids->size()) +
                                  " tokens (image rows included); at most " +
                                  std::to_string(limits_.max_prompt_tokens) + " are allowed");
    }
    p.ids = std::move(*ids);
    p.im_mask.resize(p.ids.size());
    bool has_images = false;
    for (size_t t = 0; t < p.ids.size(); ++t) {
      p.im_mask[t] = p.ids[t] < 0 && spec_.arch != checkpoint::ModelArch::kIxc1 ? 1 : 0;
      has_images |= p.ids[t] < 0;
    }
    if (checkpoint::PenaltyCoversPrompt(spec_.arch, has_images))
      p.penalty_context = p.ids;
    else
      p.penalty_context = {spec_.llm.bos_id};
    out.push_back(std::move(p));
  }
  return out;
}

StatusOr<std::string> RequestPreparer::DecodeResponse(const std::vector<int64_t>& ids) const {
  std::vector<tokenizer::TokenId> t(ids.begin(), ids.end());
  return tokenizer::PostprocessResponse(*tokenizer_, version_, t);
}

}  // namespace xcpipe::coordinator
