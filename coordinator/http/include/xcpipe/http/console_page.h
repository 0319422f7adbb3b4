// The browser console served at GET /: one static HTML page (inline CSS and script, no external
// assets, no build step) compiled into the binary. It talks to the same API as any client, with
// the key the user types: a chat box that streams answers (Server-Sent Events from
// /v1/chat/completions), image upload sent as a data: URL, and the cluster view polled from
// /v1/status (stages, hosts, devices, blocks, memory used against planned per category, step
// times, queue).
#pragma once

#include <string_view>

namespace xcpipe::http {

std::string_view ConsolePageHtml();

}  // namespace xcpipe::http
