// Runtime choice among the per-instruction-set kernels of tile.h, and the
// public isa() / available_isas() / set_isa().
#include "dispatch.h"

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "facesdk/kernels.h"

namespace facesdk {
namespace {

using detail::TileKernels;

bool cpu_supports(const TileKernels* k) {
  if (!k) return false;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const std::string name = k->name;
  // F16C (fp16 galleries) comes with every AVX2 CPU made, but is its own flag.
  const bool base = __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (name == "avx2") return base && __builtin_cpu_supports("avx2");
  if (name == "avx512") return base && __builtin_cpu_supports("avx512f");
#endif
  return std::string(k->name) == "generic";
}

std::vector<const TileKernels*> supported_kernels() {  // best first
  std::vector<const TileKernels*> out;
  for (const TileKernels* k : {detail::avx512_kernels(), detail::avx2_kernels(), detail::generic_kernels()})
    if (cpu_supports(k)) out.push_back(k);
  return out;
}

const TileKernels* find_kernels(const std::string& name) {
  for (const TileKernels* k : supported_kernels())
    if (name == k->name) return k;
  return nullptr;
}

const TileKernels* initial_kernels() {
  if (const char* env = std::getenv("FACESDK_ISA"); env && *env) {
    if (const TileKernels* k = find_kernels(env)) return k;
  }
  return supported_kernels().front();
}

std::atomic<const TileKernels*> g_kernels{initial_kernels()};

}  // namespace

const detail::TileKernels& detail::active_kernels() { return *g_kernels.load(); }

std::string isa() { return g_kernels.load()->name; }

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const TileKernels* k : supported_kernels()) names.emplace_back(k->name);
  return names;
}

void set_isa(const std::string& name) {
  const TileKernels* k = find_kernels(name);
  if (!k) throw std::invalid_argument("instruction set '" + name + "' is not available on this CPU");
  g_kernels.store(k);
}

}  // namespace facesdk
