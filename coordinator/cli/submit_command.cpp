// xcpipe submit: send a prompt (and images) to a running coordinator and stream the answer.
#include <cstdio>
#include <iostream>
#include <optional>

#include "commands.h"
#include "curve_flags.h"
#include "generation_flags.h"
#include "xcpipe/base/exit_codes.h"

namespace xcpipe::cli {

void AddSubmitCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("submit", "send a prompt (and images) to a coordinator and stream the answer");
  sub->footer(
      "Examples:\n"
      "  xcpipe submit --coordinator tcp://127.0.0.1:7000 --prompt '<ImageHere>Describe it.' --image cat.png\n"
      "  xcpipe submit --coordinator tcp://10.0.0.1:7000 --prompt-file questions.json --json\n"
      "  xcpipe submit --coordinator tcp://127.0.0.1:7000 --prompt 'Hi' --num-beams 5 --repetition-penalty 1.5\n"
      "Exit codes: 0 answered, 4 the request was refused (bad prompt/image/settings), 5 coordinator\n"
      "unreachable or no answer in time, 1 the request failed in the cluster.");
  auto coordinator = std::make_shared<std::string>();
  auto timeout_s = std::make_shared<int>(600);
  auto flags = std::make_shared<GenerationFlags>();
  sub->add_option("--coordinator", *coordinator, "coordinator address, e.g. tcp://127.0.0.1:7000")->required();
  auto curve_flags = std::make_shared<ClientCurveFlags>();
  AddClientCurveFlags(*sub, *curve_flags);
  sub->add_option("--timeout-s", *timeout_s, "give up after this many seconds")->capture_default_str();
  AddGenerationFlags(*sub, *flags);
  sub->callback([&action, sub, coordinator, timeout_s, flags, curve_flags] {
    action = [=]() -> int {
      auto request = BuildRequest(*flags, *sub);
      if (!request.ok()) {
        std::fprintf(stderr, "xcpipe submit: %s\n", request.status().message().c_str());
        return kExitInvalidInput;
      }
      auto curve = curve_flags->Load();
      if (!curve.ok()) {
        std::fprintf(stderr, "xcpipe submit: %s\n", curve.status().ToString().c_str());
        return ExitCodeFor(curve.status());
      }
      auto client = coordinator::Client::Connect(*coordinator, std::chrono::seconds(10), *curve);
      if (!client.ok()) {
        std::fprintf(stderr, "xcpipe submit: %s\n", client.status().ToString().c_str());
        return ExitCodeFor(client.status());
      }
      if (flags->official_defaults) {
        // The settings depend on the model's version, which the coordinator's status names.
        auto status = (*client)->GetStatus(std::chrono::seconds(10));
        if (!status.ok()) {
          std::fprintf(stderr, "xcpipe submit: --official-defaults: %s\n", status.status().ToString().c_str());
          return ExitCodeFor(status.status());
        }
        const std::string version = status->value("model_version", "");
        std::optional<checkpoint::ModelArch> arch;
        for (auto a : {checkpoint::ModelArch::kIxc1, checkpoint::ModelArch::kIxc2Vl, checkpoint::ModelArch::kIxc2_4khd,
                       checkpoint::ModelArch::kIxc2_5}) {
          if (checkpoint::ArchName(a) == version) arch = a;
        }
        if (!arch) {
          std::fprintf(stderr, "xcpipe submit: --official-defaults: the coordinator names no model version ('%s')\n",
                       version.c_str());
          return kExitFailure;
        }
        ApplyOfficialDefaults(*flags, *sub, *arch, *request);
      }
      const bool stream = !flags->json;
      auto result = (*client)->Generate(*request, std::chrono::seconds(*timeout_s),
                                        [stream](uint32_t, const std::string& text) {
                                          if (stream) std::cout << text << std::flush;
                                        });
      if (!result.ok()) {
        std::fprintf(stderr, "xcpipe submit: %s\n", result.status().ToString().c_str());
        return ExitCodeFor(result.status());
      }
      return PrintResult(*flags, *result);
    };
  });
}

}  // namespace xcpipe::cli
