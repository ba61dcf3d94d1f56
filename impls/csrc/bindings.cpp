// Python bindings of the fused CPU kernels (one extension module).
#include <torch/extension.h>

#include <tuple>

at::Tensor fused_map(at::Tensor attn, at::Tensor weight, at::Tensor bias);
std::tuple<at::Tensor, at::Tensor> softmax_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     bool want_attn, at::ScalarType attn_dtype);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_map", &fused_map, "ReLU(conv3x3(A + A^T) with folded BatchNorm), one pass over A");
  m.def("softmax_attention", &softmax_attention, "softmax(q k^T) v row by row in L1; (A V as (B, N, h*d), A or None)");
}
