// Registration of the fused CPU kernels as torch operators in a per-target namespace.
#include <torch/library.h>

#include <tuple>

at::Tensor fused_map(at::Tensor attn, at::Tensor weight, at::Tensor bias);
std::tuple<at::Tensor, at::Tensor> softmax_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     bool want_attn, at::ScalarType attn_dtype);

#define CMGM_REGISTER(ns, m) TORCH_LIBRARY(ns, m)
CMGM_REGISTER(CMGM_NAMESPACE, m) {
  m.def("fused_map", &fused_map);
  m.def("softmax_attention", &softmax_attention);
}
