// The placement search. For a fixed device order, a dynamic program over
// (position k in the order, first block a of the stage on that device):
//
//   start[k][a] = best value of the stages before the one that begins at block a on order[k],
//                 each of them complete with its hop into order[k]; start[k][0] = zero (the
//                 pipeline may begin on any device: devices before it are left out).
//   A stage [a, e) on order[k] ends at e = N (the last stage) or hands block e to a later
//   device order[k'] (devices between are left out); its time includes the hop, which costs
//   the intra-host link when order[k'] shares order[k]'s host and the inter-host one if not.
//
// Folding the hop's two cases into per-host minima keeps one order at O(G * N^2) instead of
// O(G^2 * N^2). The value is generic: the bottleneck (max), then (hops, sum of times) under a
// bottleneck cap, or the worst memory overflow when nothing fits.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>
#include <tuple>

#include "problem.h"

namespace xcpipe::planner::internal {
namespace {

constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();
// DP cells (orders x devices x blocks^2) one balanced search may spend; keeps 64 devices x
// 100 blocks well under a second while small clusters try every order.
constexpr double kWorkBudget = 3e7;

struct StageFacts {
  double ms = 0;       // compute + hop
  uint64_t bytes = 0;  // predicted total
  uint64_t usable = 0;
  bool cross = false;  // the hop leaves the host
};

// Value: the bottleneck (max of stage ms).
struct BottleneckOps {
  using Value = double;
  static constexpr bool kEnforceMemory = true;
  Value Inf() const { return std::numeric_limits<double>::infinity(); }
  Value Zero() const { return 0; }
  bool Less(Value a, Value b) const { return a < b; }
  bool IsInf(Value v) const { return std::isinf(v); }
  Value Extend(Value start, const StageFacts& s) const { return std::max(start, s.ms); }
};

// Value: (cross-host hops, sum of stage ms), every stage at most `cap` ms.
struct TieBreakOps {
  struct Value {
    int hops = 0;
    double sum = 0;
  };
  static constexpr bool kEnforceMemory = true;
  double cap = 0;
  Value Inf() const { return {std::numeric_limits<int>::max(), std::numeric_limits<double>::infinity()}; }
  Value Zero() const { return {0, 0}; }
  bool Less(const Value& a, const Value& b) const { return std::tie(a.hops, a.sum) < std::tie(b.hops, b.sum); }
  bool IsInf(const Value& v) const { return v.hops == std::numeric_limits<int>::max(); }
  Value Extend(const Value& start, const StageFacts& s) const {
    if (!(s.ms <= cap)) return Inf();
    return {start.hops + (s.cross ? 1 : 0), start.sum + s.ms};
  }
};

// Value: the worst overflow in bytes (negative: room left), memory not enforced.
struct OverflowOps {
  using Value = double;
  static constexpr bool kEnforceMemory = false;
  Value Inf() const { return std::numeric_limits<double>::infinity(); }
  Value Zero() const { return -std::numeric_limits<double>::infinity(); }
  bool Less(Value a, Value b) const { return a < b; }
  bool IsInf(Value v) const { return v == std::numeric_limits<double>::infinity(); }
  Value Extend(Value start, const StageFacts& s) const {
    return std::max(start, static_cast<double>(s.bytes) - static_cast<double>(s.usable));
  }
};

template <typename Ops>
struct DpResult {
  typename Ops::Value value;
  Placement placement;
};

template <typename Ops>
std::optional<DpResult<Ops>> RunDp(const Problem& p, const std::vector<size_t>& order, const Ops& ops) {
  using Value = typename Ops::Value;
  const size_t G = order.size();
  const size_t N = p.blocks();
  const size_t H = p.hosts();
  const size_t W = N + 1;
  auto at = [W](size_t k, size_t a) { return k * W + a; };

  std::vector<Value> start(G * W, ops.Inf());
  std::vector<uint32_t> start_from(G * W, kNone);  // previous position in the order
  std::vector<Value> same(G * W, ops.Inf()), cross(G * W, ops.Inf());
  std::vector<uint32_t> same_arg(G * W, kNone), cross_arg(G * W, kNone);  // the stage's first block
  // Aggregates over processed positions: per host, the best "same host" hand-over into e;
  // over all hosts, the two best "cross host" hand-overs from distinct hosts.
  std::vector<Value> host_same(H * W, ops.Inf());
  std::vector<uint32_t> host_same_k(H * W, kNone);
  struct TwoBest {
    Value v1, v2;
    uint32_t k1 = kNone, k2 = kNone;
    size_t h1 = SIZE_MAX;
  };
  std::vector<TwoBest> cross_best(W, TwoBest{ops.Inf(), ops.Inf()});

  Value best = ops.Inf();
  uint32_t best_k = kNone, best_a = kNone;

  for (size_t k = 0; k < G; ++k) {
    const size_t dev = order[k];
    const DeviceInfo& info = p.device(dev);
    const size_t h = info.ref.host;
    start[at(k, 0)] = ops.Zero();
    for (size_t e = 1; e < N; ++e) {
      Value v = host_same[h * W + e];
      uint32_t from = host_same_k[h * W + e];
      const TwoBest& tb = cross_best[e];
      const Value& cv = tb.h1 != h ? tb.v1 : tb.v2;
      const uint32_t ck = tb.h1 != h ? tb.k1 : tb.k2;
      if (ops.Less(cv, v)) v = cv, from = ck;
      start[at(k, e)] = v;
      start_from[at(k, e)] = from;
    }
    for (size_t a = 0; a < N; ++a) {
      const Value s = start[at(k, a)];
      if (ops.IsInf(s)) continue;
      uint64_t static_bytes = 0, peak = 0;
      for (size_t e = a + 1; e <= N; ++e) {
        static_bytes += p.StaticBytes(e - 1, e);
        peak = std::max(peak, p.ActivationBytes(e - 1));
        const uint64_t bytes = static_bytes + peak + info.workspace;
        if (Ops::kEnforceMemory && bytes > info.usable) break;
        if (a == 0 && !p.ValidFirstEnd(e)) {
          if (p.vision() == VisionPlacement::kSeparateStage && e > 1) break;
          continue;
        }
        const double t = p.ComputeMs(dev, a, e);
        StageFacts facts{t, bytes, info.usable, false};
        if (e == N) {
          Value v = ops.Extend(s, facts);
          if (ops.Less(v, best)) best = v, best_k = static_cast<uint32_t>(k), best_a = static_cast<uint32_t>(a);
          continue;
        }
        facts.ms = t + p.HopMs(dev, e, false);
        Value vs = ops.Extend(s, facts);
        if (ops.Less(vs, same[at(k, e)])) same[at(k, e)] = vs, same_arg[at(k, e)] = static_cast<uint32_t>(a);
        if (H > 1) {
          facts.ms = t + p.HopMs(dev, e, true);
          facts.cross = true;
          Value vc = ops.Extend(s, facts);
          if (ops.Less(vc, cross[at(k, e)])) cross[at(k, e)] = vc, cross_arg[at(k, e)] = static_cast<uint32_t>(a);
        }
      }
    }
    for (size_t e = 1; e < N; ++e) {
      if (ops.Less(same[at(k, e)], host_same[h * W + e])) {
        host_same[h * W + e] = same[at(k, e)];
        host_same_k[h * W + e] = static_cast<uint32_t>(k);
      }
      const Value& v = cross[at(k, e)];
      TwoBest& tb = cross_best[e];
      if (ops.IsInf(v)) continue;
      if (tb.h1 == h) {
        if (ops.Less(v, tb.v1)) tb.v1 = v, tb.k1 = static_cast<uint32_t>(k);
      } else if (ops.Less(v, tb.v1)) {
        tb.v2 = tb.v1, tb.k2 = tb.k1;
        tb.v1 = v, tb.k1 = static_cast<uint32_t>(k), tb.h1 = h;
      } else if (ops.Less(v, tb.v2)) {
        tb.v2 = v, tb.k2 = static_cast<uint32_t>(k);
      }
    }
  }
  if (best_k == kNone) return std::nullopt;

  DpResult<Ops> result{best, {}};
  size_t k = best_k, a = best_a, e = N;
  while (true) {
    result.placement.push_back({order[k], a, e});
    if (a == 0) break;
    const uint32_t prev = start_from[at(k, a)];
    const bool crossed = p.device(order[prev]).ref.host != p.device(order[k]).ref.host;
    const uint32_t prev_a = crossed ? cross_arg[at(prev, a)] : same_arg[at(prev, a)];
    e = a;
    k = prev;
    a = prev_a;
  }
  std::reverse(result.placement.begin(), result.placement.end());
  return result;
}

// Kinds of devices: the same kind is interchangeable for the search.
std::tuple<double, double, double, double, bool> Kind(const GpuSpec& g) {
  return {g.memory_gib, g.tflops, g.mem_bw_gbps, g.reserved_gib, g.is_cuda()};
}

}  // namespace

Problem::Problem(const ModelCost& cost, const ClusterSpec& cluster, VisionPlacement vision, double headroom_fraction)
    : cost_(&cost), cluster_(&cluster), vision_(vision), headroom_(headroom_fraction) {
  const size_t N = cost.blocks.size();
  lead_ = 0;
  while (lead_ < N && (cost.blocks[lead_].kind == checkpoint::BlockKind::kVision ||
                       cost.blocks[lead_].kind == checkpoint::BlockKind::kEmbed)) {
    ++lead_;
  }
  lead_ = std::max<size_t>(lead_, 1);
  // Auto is resolved before a problem is built (planner.cpp); a stray one plans as "first".
  if (N == 0 || cost.blocks[0].kind != checkpoint::BlockKind::kVision || vision_ == VisionPlacement::kAuto) {
    vision_ = VisionPlacement::kFirstStage;
  }
  prefix_static_.assign(N + 1, 0);
  for (size_t i = 0; i < N; ++i) {
    prefix_static_[i + 1] = prefix_static_[i] + cost.blocks[i].weight_bytes + cost.blocks[i].kv_bytes;
  }
  for (size_t h = 0; h < cluster.hosts.size(); ++h) {
    for (size_t g = 0; g < cluster.hosts[h].gpus.size(); ++g) {
      DeviceInfo info;
      info.ref = {h, g};
      info.gpu = &cluster.hosts[h].gpus[g];
      info.host = &cluster.hosts[h];
      info.capacity = info.gpu->capacity_bytes();
      info.usable = static_cast<uint64_t>(static_cast<double>(info.capacity) * (1.0 - headroom_fraction));
      info.workspace = info.gpu->reserved_bytes() + cost.stage_buffer_bytes;
      info.prefix_ms.assign(N + 1, 0);
      for (size_t i = 0; i < N; ++i) {
        info.prefix_ms[i + 1] = info.prefix_ms[i] + PredictBlockMs(cost.blocks[i], *info.gpu);
      }
      devices_.push_back(std::move(info));
    }
  }
}

std::optional<size_t> Problem::DeviceId(const DeviceRef& ref) const {
  for (size_t i = 0; i < devices_.size(); ++i) {
    if (devices_[i].ref == ref) return i;
  }
  return std::nullopt;
}

double Problem::HopMs(size_t device, size_t end, bool cross) const {
  const uint64_t bytes = cost_->blocks[end - 1].send_bytes_per_step;
  const HostSpec& host = *devices_[device].host;
  if (cross)
    return PredictTransferMs(bytes, cluster_->network.inter_host_gbps, cluster_->network.inter_host_latency_us);
  return PredictTransferMs(bytes, host.intra_host_gbps, host.intra_host_latency_us);
}

uint64_t Problem::StageTotalBytes(size_t device, size_t first, size_t end) const {
  uint64_t peak = 0;
  for (size_t i = first; i < end; ++i) peak = std::max(peak, ActivationBytes(i));
  return StaticBytes(first, end) + peak + devices_[device].workspace;
}

size_t OrderLimit(const Problem& p) {
  const double cells = static_cast<double>(std::max<size_t>(p.devices(), 1)) * static_cast<double>(p.blocks() + 1) *
                       static_cast<double>(p.blocks() + 1);
  const double fit = std::floor(kWorkBudget / cells);
  return static_cast<size_t>(std::clamp(fit, 1.0, static_cast<double>(kMaxDeviceOrders)));
}

std::vector<std::vector<size_t>> CandidateOrders(const Problem& p, size_t limit) {
  const size_t G = p.devices();
  const size_t H = p.hosts();
  std::vector<std::vector<size_t>> orders;
  std::set<std::vector<std::pair<size_t, size_t>>> seen;  // (host group, kind) per position

  // Kind ids in order of first appearance; host signatures (link + kinds held) likewise.
  std::map<std::tuple<double, double, double, double, bool>, size_t> kind_ids;
  std::vector<size_t> kind(G);
  for (size_t d = 0; d < G; ++d) kind[d] = kind_ids.emplace(Kind(*p.device(d).gpu), kind_ids.size()).first->second;
  std::vector<std::vector<size_t>> host_devices(H);
  for (size_t d = 0; d < G; ++d) host_devices[p.device(d).ref.host].push_back(d);
  std::map<std::tuple<double, double, std::vector<size_t>>, size_t> sig_ids;
  std::vector<size_t> host_sig(H);
  for (size_t h = 0; h < H; ++h) {
    std::vector<size_t> kinds;
    for (size_t d : host_devices[h]) kinds.push_back(kind[d]);
    std::sort(kinds.begin(), kinds.end());
    const HostSpec& host = p.cluster().hosts[h];
    host_sig[h] =
        sig_ids.emplace(std::make_tuple(host.intra_host_gbps, host.intra_host_latency_us, kinds), sig_ids.size())
            .first->second;
  }

  auto add = [&](const std::vector<size_t>& order) {
    std::vector<std::pair<size_t, size_t>> key;
    size_t previous_host = SIZE_MAX, group = 0;
    for (size_t d : order) {
      const size_t h = p.device(d).ref.host;
      if (h != previous_host) ++group;
      // Identical devices and identical hosts are interchangeable: the key names kinds and
      // host signatures, not which device or host.
      key.emplace_back(group * 1'000'000 + host_sig[h], kind[d]);
      previous_host = h;
    }
    if (seen.insert(key).second) orders.push_back(order);
  };

  std::vector<size_t> file_order(G);
  std::iota(file_order.begin(), file_order.end(), 0);
  add(file_order);

  // Host orders: distinct permutations of the host signatures (hosts of one signature keep
  // their file order among themselves).
  std::vector<std::vector<size_t>> host_orders;
  bool all_host_orders = true;
  {
    std::vector<size_t> sig_perm = host_sig;
    std::sort(sig_perm.begin(), sig_perm.end());
    do {
      std::vector<size_t> used(H, 0), hosts;
      for (size_t sig : sig_perm) {
        for (size_t h = 0; h < H; ++h) {
          if (host_sig[h] == sig && !used[h]) {
            used[h] = 1;
            hosts.push_back(h);
            break;
          }
        }
      }
      host_orders.push_back(std::move(hosts));
      if (host_orders.size() >= limit) {
        all_host_orders = !std::next_permutation(sig_perm.begin(), sig_perm.end());
        break;
      }
    } while (std::next_permutation(sig_perm.begin(), sig_perm.end()));
  }

  // Every distinct sequence of kinds inside each host, when the product of their counts and
  // the host orders stays within the limit: then the search covers every host-contiguous
  // order and is exact over them.
  std::vector<std::vector<std::vector<size_t>>> host_sequences(H);
  double total = static_cast<double>(host_orders.size());
  for (size_t h = 0; h < H && total <= static_cast<double>(limit); ++h) {
    std::vector<size_t> kinds;
    for (size_t d : host_devices[h]) kinds.push_back(kind[d]);
    std::sort(kinds.begin(), kinds.end());
    do {
      // Devices of one kind in file order.
      std::vector<size_t> next_of_kind(kind_ids.size(), 0), sequence;
      for (size_t k : kinds) {
        size_t seen_of_kind = 0;
        for (size_t d : host_devices[h]) {
          if (kind[d] != k) continue;
          if (seen_of_kind++ == next_of_kind[k]) {
            sequence.push_back(d);
            break;
          }
        }
        ++next_of_kind[k];
      }
      host_sequences[h].push_back(std::move(sequence));
    } while (host_sequences[h].size() <= limit && std::next_permutation(kinds.begin(), kinds.end()));
    total *= static_cast<double>(host_sequences[h].size());
  }
  if (all_host_orders && total <= static_cast<double>(limit)) {
    for (const auto& hosts : host_orders) {
      std::vector<size_t> choice(H, 0);  // an odometer over each host's sequences
      while (true) {
        std::vector<size_t> order;
        for (size_t h : hosts) {
          const auto& seq = host_sequences[h][choice[h]];
          order.insert(order.end(), seq.begin(), seq.end());
        }
        add(order);
        size_t digit = 0;
        while (digit < H && ++choice[digit] == host_sequences[digit].size()) choice[digit++] = 0;
        if (digit == H) break;
      }
    }
    return orders;
  }

  // Too many: each host's devices grouped by kind, with kind priorities permuted (every
  // permutation for up to 4 kinds, else sorts by memory, compute and bandwidth).
  const size_t K = kind_ids.size();
  std::vector<std::vector<size_t>> kind_ranks;  // rank of each kind
  if (K <= 4) {
    std::vector<size_t> perm(K);
    std::iota(perm.begin(), perm.end(), 0);
    do {
      std::vector<size_t> rank(K);
      for (size_t i = 0; i < K; ++i) rank[perm[i]] = i;
      kind_ranks.push_back(rank);
    } while (std::next_permutation(perm.begin(), perm.end()));
  } else {
    std::vector<std::tuple<double, double, double, double, bool>> kinds(K);
    for (const auto& [k, id] : kind_ids) kinds[id] = k;
    auto by = [&](auto key) {
      std::vector<size_t> ids(K);
      std::iota(ids.begin(), ids.end(), 0);
      std::stable_sort(ids.begin(), ids.end(), [&](size_t a, size_t b) { return key(kinds[a]) > key(kinds[b]); });
      std::vector<size_t> rank(K);
      for (size_t i = 0; i < K; ++i) rank[ids[i]] = i;
      kind_ranks.push_back(rank);
      std::reverse(ids.begin(), ids.end());
      for (size_t i = 0; i < K; ++i) rank[ids[i]] = i;
      kind_ranks.push_back(rank);
    };
    by([](const auto& k) { return std::get<0>(k); });  // memory
    by([](const auto& k) { return std::get<1>(k); });  // compute
    by([](const auto& k) { return std::get<2>(k); });  // bandwidth
  }
  for (const auto& hosts : host_orders) {
    for (const auto& rank : kind_ranks) {
      if (orders.size() >= limit) return orders;
      std::vector<size_t> order;
      for (size_t h : hosts) {
        std::vector<size_t> devs = host_devices[h];
        std::stable_sort(devs.begin(), devs.end(), [&](size_t a, size_t b) { return rank[kind[a]] < rank[kind[b]]; });
        order.insert(order.end(), devs.begin(), devs.end());
      }
      add(order);
    }
  }
  return orders;
}

std::optional<Placement> SolveBalanced(const Problem& p) {
  const auto orders = CandidateOrders(p, OrderLimit(p));
  BottleneckOps phase1;
  double best = phase1.Inf();
  std::vector<double> order_best(orders.size(), phase1.Inf());
  for (size_t i = 0; i < orders.size(); ++i) {
    auto r = RunDp(p, orders[i], phase1);
    if (r) order_best[i] = r->value;
    best = std::min(best, order_best[i]);
  }
  if (std::isinf(best)) return std::nullopt;
  // Only orders that reach the optimum can hold a plan within it (phase 1 is exact per order).
  TieBreakOps phase2;
  phase2.cap = best;
  std::optional<DpResult<TieBreakOps>> winner;
  for (size_t i = 0; i < orders.size(); ++i) {
    if (order_best[i] > best) continue;
    auto r = RunDp(p, orders[i], phase2);
    if (r && (!winner || phase2.Less(r->value, winner->value))) winner = std::move(r);
  }
  if (!winner) return std::nullopt;  // unreachable: the phase-1 optimum meets its own cap
  return winner->placement;
}

std::optional<Placement> SolveLeastOverflow(const Problem& p) {
  const auto orders = CandidateOrders(p, OrderLimit(p));
  OverflowOps ops;
  std::optional<DpResult<OverflowOps>> winner;
  for (const auto& order : orders) {
    auto r = RunDp(p, order, ops);
    if (r && (!winner || r->value < winner->value)) winner = std::move(r);
  }
  if (!winner) return std::nullopt;
  return winner->placement;
}

bool AnyFeasible(const Problem& p) {
  const auto orders = CandidateOrders(p, OrderLimit(p));
  OverflowOps ops;
  for (const auto& order : orders) {
    auto r = RunDp(p, order, ops);
    if (r && r->value <= 0) return true;
  }
  return false;
}

Placement EvenPlacement(const Problem& p) {
  const size_t G = p.devices();
  const size_t N = p.blocks();
  const auto& blocks = p.cost().blocks;
  const bool separate = p.vision() == VisionPlacement::kSeparateStage;
  if (G == 0 || N == 0 || (separate && G < 2)) return {};
  std::vector<size_t> device_of(N, 0);
  const size_t first_llm_device = separate ? 1 : 0;
  const size_t llm_devices = G - first_llm_device;
  size_t layers = 0;
  for (const auto& b : blocks) layers += b.kind == checkpoint::BlockKind::kLayer ? 1 : 0;
  // The official auto_configure_device_map: 'vit', 'vision_proj' and 'tok_embeddings' count
  // as 3 layers on GPU 0, and each GPU takes (layers + 6) / num_gpus. With vision on its own
  // device, the LLM devices share the layers by count alone.
  const double per_device = separate ? static_cast<double>(layers) / static_cast<double>(llm_devices)
                                     : static_cast<double>(layers + 6) / static_cast<double>(G);
  double used = separate ? 0 : 3;
  size_t target = first_llm_device;
  for (size_t i = 0; i < N; ++i) {
    switch (blocks[i].kind) {
      case checkpoint::BlockKind::kVision:
        device_of[i] = 0;
        break;
      case checkpoint::BlockKind::kEmbed:
        device_of[i] = first_llm_device;
        break;
      case checkpoint::BlockKind::kLayer:
        if (used >= per_device && target + 1 < G) {
          ++target;
          used = 0;
        }
        device_of[i] = target;
        used += 1;
        break;
      case checkpoint::BlockKind::kHead:
        device_of[i] = G - 1;
        break;
    }
  }
  Placement placement;
  for (size_t i = 0; i < N; ++i) {
    if (placement.empty() || placement.back().device != device_of[i]) {
      placement.push_back({device_of[i], i, i + 1});
    } else {
      placement.back().end = i + 1;
    }
  }
  return placement;
}

Placement GreedyMemoryPlacement(const Problem& p) {
  const size_t G = p.devices();
  const size_t N = p.blocks();
  const bool separate = p.vision() == VisionPlacement::kSeparateStage;
  if (G == 0 || N == 0 || (separate && G < 2)) return {};
  Placement placement;
  size_t next = 0;
  for (size_t d = 0; d < G && next < N; ++d) {
    const bool last_device = d + 1 == G;
    const size_t unit = next == 0 ? (separate ? 1 : p.lead()) : next + 1;
    const size_t min_end = std::min(unit, N);
    const DeviceInfo& info = p.device(d);
    if (p.StageTotalBytes(d, next, min_end) > info.usable && !last_device) continue;  // skip, as accelerate does
    size_t end = min_end;
    if (last_device) {
      end = N;  // whatever is left goes here, fitting or not
    } else if (!(separate && next == 0)) {
      while (end < N && p.StageTotalBytes(d, next, end + 1) <= info.usable) ++end;
    }
    placement.push_back({d, next, end});
    next = end;
  }
  return placement;
}

}  // namespace xcpipe::planner::internal
