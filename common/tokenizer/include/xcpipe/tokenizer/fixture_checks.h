// The tokenizer half of `xcpipe check-fixtures`: replays every tokenizer and prompt fact a
// fixtures folder records (docs: fixtures/README.md) through this module and reports each
// check as passed or failed. Everything expected is read from the files, so the same code runs
// on other fixture folders of the same format (other seeds, shapes and cases).
//
// What is found and checked, under `fixtures_root`:
//   * tokenizer_cases.json in `tokenizer/` and in every `<model>/tokenizer/`, each against the
//     tokenizer.model beside it: special ids and vocabulary size, per string ids with and without
//     BOS, tokens, decoded text (with and without special tokens), raw SentencePiece ids; and its
//     `chat_prompts` (prompt text, input ids, text parts, image-mask layouts, stop ids), rebuilt
//     from the recorded prompt text.
//   * every model folder (one with cases/*/manifest.json and checkpoint/ or model_info.json):
//     its version (model_info.json "architecture", else the checkpoint's tensor names, else the
//     folder name), its tokenizer (`<model>/tokenizer/tokenizer.model`, else the root one), and
//     for each case whatever its manifest and .npy files hold: prompt_text, input_ids.npy (also
//     left-padded batches), text_parts / text_segments / history segments, the ids with image
//     slots (-1) and im_mask.npy / image_slot_range, build_inputs_ids_if_image_is_None, and the
//     response text post-processed from generated_ids*.npy.
//
// Thread-safety: reentrant (no shared state). Failure: never fails as a whole; an unreadable
// file or a malformed field becomes a failed check naming the file. Never throws.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "xcpipe/base/status.h"
#include "xcpipe/tokenizer/chat_template.h"

namespace xcpipe::tokenizer {

struct FixtureCheckResult {
  std::string name;  // "<relative path>: <what>", e.g. "ixc2_vl/cases/text_chat: input_ids"
  bool passed = false;
  std::string message;  // on failure, the first difference; on success, what matched
};

std::vector<FixtureCheckResult> RunTokenizerFixtureChecks(const std::filesystem::path& fixtures_root);

// The chat version of a model folder (see the header comment for the order of evidence).
StatusOr<ChatVersion> DetectModelFolderVersion(const std::filesystem::path& model_dir);

// `<model_dir>/tokenizer/tokenizer.model` where it exists, else `<fixtures_root>/tokenizer/tokenizer.model`.
std::filesystem::path ModelFolderTokenizerPath(const std::filesystem::path& fixtures_root,
                                               const std::filesystem::path& model_dir);

}  // namespace xcpipe::tokenizer
