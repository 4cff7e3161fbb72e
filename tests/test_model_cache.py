"""A second process compiling the same model loads machine code from the disk cache."""
import json
import os
import subprocess
import sys

SCRIPT = r"""
import json, numpy as np, kcompile
from kcompile.layers import Dense, Dropout, Flatten
from codegen.runtime import CompiledRunner
kcompile.utils.set_random_seed(0)
m = kcompile.Sequential([Flatten(input_shape=(4, 4)), Dense(16, activation='relu'), Dropout(0.2),
                         Dense(3, activation='softmax')])
m.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
x = np.random.default_rng(0).random((20, 4, 4), dtype=np.float32)
y = np.eye(3, dtype=np.float32)[np.arange(20) % 3]
m.fit(x, y, epochs=2, verbose=0, validation_split=0.25)
p = m.predict(x, verbose=0)
hits = {k[0]: prog.runner.compiled.code.cache_hit for k, prog in m._programs.items()}
print(json.dumps({"hits": hits, "weights": [w.tolist() for w in m.get_weights()], "p": p.tolist()}))
"""


def run(cache_dir):
    env = dict(os.environ, KCOMPILE_CACHE_DIR=str(cache_dir))
    env.pop("KCOMPILE_CACHE", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_second_process_hits_and_computes_the_same(tmp_path):
    first = run(tmp_path)
    second = run(tmp_path)
    assert set(first["hits"]) == {"train", "eval", "predict"}
    assert not any(first["hits"].values())
    assert all(second["hits"].values())
    assert first["weights"] == second["weights"] and first["p"] == second["p"]
    assert any(name.endswith(".kco") for name in os.listdir(tmp_path))
