#pragma once
// Internals of upcycling (include/finmoe/convert.h): Eq. 10's index arithmetic
// and the parsed initialisation options.
#include <cstdint>
#include <string>

namespace finmoe::upcycle_detail {

// Which slices of the dense FFN expert e is cut from (FineRMoE Eq. 10).
struct ExpertSlice {
  int64_t j = 0;    // intermediate slice: rows [j*F/G_I, (j+1)*F/G_I) of gate/up
  int64_t g_o = 0;  // output slice: rows [g_o*D/G_O, (g_o+1)*D/G_O) of down
};
ExpertSlice expert_slice(int64_t e, int64_t G_I, int64_t R_I, int64_t R_O);

// --router-init: "normal:STD" | "zeros" | "virtual-groups:STD".
struct RouterInit {
  enum class Kind { Normal, Zeros, VirtualGroups } kind = Kind::Normal;
  double std = 0.02;
};
RouterInit parse_router_init(const std::string& spec);

// Rows of an expert of width `width` that Drop-Upcycling re-initialises:
// round(ratio * width), halves rounded up.
int64_t drop_count(double ratio, int64_t width);

}  // namespace finmoe::upcycle_detail
