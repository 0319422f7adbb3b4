#include "xcpipe/tokenizer/train.h"

#include <sentencepiece_trainer.h>

#include <random>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "xcpipe/tokenizer/utf8.h"

namespace xcpipe::tokenizer {
namespace {

// Hand-written text in the registers the models see: chat templates, English, Chinese, code.
constexpr std::string_view kBuiltInCorpus[] = {
    "Hello! Please introduce yourself in one sentence.",
    "Please describe this image in detail.",
    "What is shown here? What is in this picture? Tell me more.",
    "Describe the colours, the shapes and the layout of this picture in great detail, please.",
    "Write one short sentence about the colour of the sky at noon, please.",
    "The image shows a red square on a white background, with a blue circle in the upper left corner.",
    "A cat is sitting on a wooden table next to a cup of coffee and an open book.",
    "Two people are walking along the beach at sunset while the waves roll onto the sand.",
    "I am an AI assistant. I can answer questions about images and text.",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "There are three apples, two oranges and one banana in the basket on the kitchen counter.",
    "The model is split across several GPUs; each stage holds a contiguous range of layers.",
    "Compare the two images and tell me what is different between them.",
    "Hi, who are you? I am an AI assistant whose name is InternLM-XComposer.",
    "你好，请介绍一下这张图片。",
    "你好，世界！浦语·灵笔是一个多模态大模型。",
    "图片中有一只猫坐在桌子上，旁边放着一杯咖啡和一本打开的书。",
    "天空是蓝色的，白云在山顶上慢慢地飘过。",
    "请详细描述这张图片的内容，包括颜色、形状和布局。",
    "上海人工智能实验室开发了这个模型，它可以理解图像和文字。",
    "日本語のテキストとカタカナ",
    "def foo(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "if (status.ok()) { return value; } else { return status; }",
    "import torch\nx = torch.zeros(3, 4)\nprint(x.shape)\n",
    "URL: https://github.com/InternLM/InternLM-XComposer?tab=readme#section",
    "1+1=2\n2*3=6\n3.14159 2.71828 12345 67890 100% 0.5",
    "Tab\tseparated\tvalues\r\nCRLF line",
    "    indented code line\n        more indented line\n",
    "emoji: 😀👍🚀 and accents: àéîõü ñ ß ø",
    "[UNUSED_TOKEN_146]user\nWhat is this?[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n",
    "[UNUSED_TOKEN_146]system\nYou are helpful.[UNUSED_TOKEN_145]\n",
    "[UNUSED_TOKEN_146]user\n<ImageHere>Please describe this image.[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n",
    "The image shows a landscape.[UNUSED_TOKEN_145]\n",
    " <|User|>:What is in this picture?\n<TOKENS_UNUSED_0> <|Bot|>: A dog.<TOKENS_UNUSED_1>\n",
    " <|User|>:Hello! Please introduce yourself in one sentence.\n<TOKENS_UNUSED_0> <|Bot|>:",
};

// Syllables for synthetic words: enough distinct pairs that BPE always finds merges to learn.
constexpr std::string_view kOnsets[] = {"",  "b", "c",  "d",  "f",  "g",  "h",  "j",  "k",  "l",
                                        "m", "n", "p",  "qu", "r",  "s",  "t",  "v",  "w",  "x",
                                        "y", "z", "ch", "sh", "th", "st", "tr", "pl", "gr", "br"};
constexpr std::string_view kVowels[] = {"a", "e", "i", "o", "u", "ai", "ea", "io", "ou", "y"};
constexpr std::string_view kCodas[] = {"", "", "n", "r", "s", "t", "l", "m", "ng", "ck", "x"};
constexpr std::string_view kHanzi[] = {"的", "一", "是", "不", "了", "人", "我", "在", "有", "他", "这", "中",
                                       "大", "来", "上", "国", "个", "到", "说", "们", "为", "子", "和", "你",
                                       "地", "出", "道", "也", "时", "年", "图", "片", "模", "型", "色", "天"};
constexpr std::string_view kPunct[] = {".", ",", "?", "!", ":", ";", " -", "\n", "。", "，"};

class Synthetic {
 public:
  explicit Synthetic(uint32_t seed) : rng_(seed) {}

  std::string Sentence() {
    std::string s;
    const int words = 4 + Pick(9);
    for (int w = 0; w < words; ++w) {
      if (w > 0) s += ' ';
      if (Pick(8) == 0) {
        for (int k = 0, n = 1 + Pick(4); k < n; ++k) s += kHanzi[Pick(std::size(kHanzi))];
      } else if (Pick(12) == 0) {
        s += std::to_string(rng_() % 100000);
      } else {
        std::string word;
        for (int k = 0, n = 1 + Pick(3); k < n; ++k) {
          word += kOnsets[Pick(std::size(kOnsets))];
          word += kVowels[Pick(std::size(kVowels))];
          word += kCodas[Pick(std::size(kCodas))];
        }
        if (Pick(6) == 0) word[0] = static_cast<char>(word[0] - 'a' + 'A');
        s += word;
      }
    }
    s += kPunct[Pick(std::size(kPunct))];
    return s;
  }

 private:
  // Our own mapping of the generator's output: std::uniform_int_distribution differs between
  // standard libraries, mt19937 itself does not.
  int Pick(size_t n) { return static_cast<int>(rng_() % n); }
  std::mt19937 rng_;
};

class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>* sentences) : sentences_(sentences) {}
  bool done() const override { return index_ >= sentences_->size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return (*sentences_)[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>* sentences_;
  size_t index_ = 0;
};

}  // namespace

StatusOr<std::string> TrainTokenizer(const TrainTokenizerOptions& options) {
  if (options.vocab_size < kMinTrainedVocab || options.vocab_size > kMaxTrainedVocab) {
    return InvalidArgumentError("tokenizer vocab_size " + std::to_string(options.vocab_size) +
                                " is outside the supported range [" + std::to_string(kMinTrainedVocab) + ", " +
                                std::to_string(kMaxTrainedVocab) + "]");
  }
  std::vector<std::string> sentences;
  for (const auto s : kBuiltInCorpus) sentences.emplace_back(s);
  sentences.emplace_back(kIxc2MetaInstruction);
  sentences.emplace_back(kIxc1MetaInstruction);
  for (size_t i = 0; i < options.extra_sentences.size(); ++i) {
    if (auto err = FindUtf8Error(options.extra_sentences[i])) {
      return InvalidArgumentError("extra training sentence " + std::to_string(i) + " is not valid UTF-8 at byte " +
                                  std::to_string(err->offset) + ": " + err->reason);
    }
    sentences.push_back(options.extra_sentences[i]);
  }
  Synthetic synthetic(options.seed);
  // About 24 new words per piece to learn keeps every requested size reachable.
  const int synthetic_sentences = 3 * options.vocab_size;
  for (int i = 0; i < synthetic_sentences; ++i) sentences.push_back(synthetic.Sentence());

  const bool v1 = options.version == ChatVersion::kIxc1;
  const std::string user_symbols = v1 ? std::string(kIxc1EndOfHuman) + "," + std::string(kIxc1EndOfAssistant)
                                      : std::string(kIxc2TurnStart) + "," + std::string(kIxc2TurnEnd);
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"hard_vocab_limit", "true"},
      {"byte_fallback", "true"},
      {"character_coverage", "0.9995"},
      {"user_defined_symbols", user_symbols},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"normalization_rule_name", "identity"},
      {"add_dummy_prefix", "false"},
      {"remove_extra_whitespaces", "false"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentence_length", "16384"},
      {"num_threads", "1"},
      {"minloglevel", "2"},  // SentencePiece logs every training step to stderr otherwise
  };
  sentencepiece::SetRandomGeneratorSeed(options.seed);
  VectorIterator iterator(&sentences);
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &iterator, &model);
  if (!status.ok()) {
    const std::string msg =
        "training a " + std::to_string(options.vocab_size) + "-piece tokenizer: " + std::string(status.message());
    if (status.code() == sentencepiece::util::StatusCode::kInternal &&
        std::string_view(status.message()).find("Vocabulary size") != std::string_view::npos) {
      return InvalidArgumentError(msg);
    }
    return InternalError(msg);
  }
  return model;
}

}  // namespace xcpipe::tokenizer
