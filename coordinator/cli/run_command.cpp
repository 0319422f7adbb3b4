// xcpipe run: generation with the whole model on this machine and no cluster to set up: this
// CLI (tokenizer, images) plus one worker process holding every block (libtorch and the
// tokenizer cannot share a process). The reference every pipeline must equal.
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "compute_flags.h"
#include "generation_flags.h"
#include "signalled_cluster.h"
#include "xcpipe/base/exit_codes.h"
#include "xcpipe/coordinator/local_cluster.h"

namespace xcpipe::cli {

void AddRunCommand(CLI::App& app, Action& action) {
  auto* sub = app.add_subcommand("run", "generate with the whole model on this machine, no cluster");
  sub->footer(
      "Examples:\n"
      "  xcpipe run --model /tmp/m --prompt '<ImageHere>What is in the picture?' --image cat.png\n"
      "  xcpipe run --model /tmp/m --prompt 'Hello' --max-new-tokens 16 --json\n"
      "  xcpipe run --model /tmp/ixc1 --prompt 'Hello' --official-defaults   (1.0: 5 beams, as chat())\n"
      "Exit codes: 0 answered, 4 bad model, prompt, image or settings, 5 the worker did not start.");
  auto o = std::make_shared<coordinator::LocalClusterOptions>();
  auto flags = std::make_shared<GenerationFlags>();
  o->workers = 1;
  o->quiet_workers = true;
  sub->add_option("--model", o->model_dir, "checkpoint folder")->required();
  sub->add_option("--tokenizer", o->tokenizer, "tokenizer.model (default: found next to the model)");
  AddComputeFlags(*sub, *o);
  sub->add_option("--threads", o->threads_per_worker, "compute threads (0: every core)");
  AddGenerationFlags(*sub, *flags);
  sub->callback([&action, sub, o, flags] {
    action = [=]() -> int {
      auto request = BuildRequest(*flags, *sub);
      if (!request.ok()) {
        std::fprintf(stderr, "xcpipe run: %s\n", request.status().message().c_str());
        return kExitInvalidInput;
      }
      if (flags->official_defaults) {
        auto described = checkpoint::DescribeCheckpoint(o->model_dir);
        if (!described.ok()) {
          std::fprintf(stderr, "xcpipe run: %s\n", described.status().ToString().c_str());
          return ExitCodeFor(described.status());
        }
        ApplyOfficialDefaults(*flags, *sub, described->spec.arch, *request);
      }
      auto cluster = StartLocalCluster(*o);
      if (!cluster.ok()) {
        std::fprintf(stderr, "xcpipe run: %s\n", cluster.status().ToString().c_str());
        return ExitCodeFor(cluster.status());
      }
      auto client = coordinator::Client::Connect((*cluster)->address(), std::chrono::seconds(10));
      if (!client.ok()) {
        std::fprintf(stderr, "xcpipe run: %s\n", client.status().ToString().c_str());
        return ExitCodeFor(client.status());
      }
      const bool stream = !flags->json;
      auto result = (*client)->Generate(*request, std::chrono::minutes(30), [stream](uint32_t, const std::string& t) {
        if (stream) std::cout << t << std::flush;
      });
      if (!result.ok()) {
        std::fprintf(stderr, "xcpipe run: %s\n", result.status().ToString().c_str());
        return ExitCodeFor(result.status());
      }
      return PrintResult(*flags, *result);
    };
  });
}

}  // namespace xcpipe::cli
