#!/usr/bin/env python3
"""onnxruntime's matrix-product throughput on this machine, for the shapes `glance matmul` measures.

    /work/venv/bin/python scripts/matmul_ort.py [--threads 1] [--runs 20] [--shapes 577x384x1536,...]

Each shape is one ONNX graph: activations [m, k] (input) times constant weights [k, n], as in a
transformer layer. f32: MatMul. int8: what onnxruntime's dynamic quantization writes
(DynamicQuantizeLinear on the activations, MatMulInteger by int8 weights, then the rescale to f32).
Prints GFLOP/s (GOP/s for int8), counting a multiply-add as two operations: the median of --runs
after two warm-up runs, CPUExecutionProvider, intra_op_num_threads = --threads, ORT_ENABLE_ALL.
"""
import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

DEFAULT_SHAPES = "577x384x1536,512x512x512,1x256x1024,1x256x64044,197x768x3072,1x768x3072,1x768x50257"


def graph(kind, m, k, n):
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    if kind == "f32":
        w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [w]
    else:
        w = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w")
        w_zero = numpy_helper.from_array(np.array(0, np.int8), "w_zero")
        w_scale = numpy_helper.from_array(np.array(0.01, np.float32), "w_scale")
        nodes = [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "x_scale", "x_zero"]),
            helper.make_node("MatMulInteger", ["xq", "w", "x_zero", "w_zero"], ["acc"]),
            helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x_scale", "w_scale"], ["scale"]),
            helper.make_node("Mul", ["accf", "scale"], ["y"]),
        ]
        inits = [w, w_zero, w_scale]
    g = helper.make_graph(nodes, "matmul", [x], [y], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def throughput(kind, shape, threads, runs):
    m, k, n = shape
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(graph(kind, m, k, n), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    for _ in range(2):
        sess.run(None, {"x": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    args = ap.parse_args()
    print(f"onnxruntime {ort.__version__}, {args.threads} thread(s), median of {args.runs}")
    print("| m x k x n | f32 GFLOP/s | int8 GOP/s |")
    print("|---|---:|---:|")
    for s in args.shapes.split(","):
        shape = tuple(int(v) for v in s.split("x"))
        f32 = throughput("f32", shape, args.threads, args.runs)
        i8 = throughput("int8", shape, args.threads, args.runs)
        print(f"| {s} | {f32:.1f} | {i8:.1f} |", flush=True)


if __name__ == "__main__":
    main()
