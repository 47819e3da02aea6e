# Sourced by bench/peers/*_llamacpp.sh: where the llama.cpp they build comes
# from. The llama-cpp-python sdist on PyPI (pinned: 0.3.36 vendors llama.cpp
# commit 0c1e570) is downloaded once into $peers_cache (default
# ~/.cache/engram-peers, outside the repository: no llama.cpp code here), with
# a venv that has the `gguf` and numpy packages for bench/peers/make_gguf.py.
peers_version=0.3.36
peers_commit=0c1e570
peers_cache=${ENGRAM_PEERS_CACHE:-$HOME/.cache/engram-peers}
peers_src=$peers_cache/llama_cpp_python-$peers_version/vendor/llama.cpp

# The venv and the unpacked sdist, each made once (needs the network then).
peers_fetch() {
  mkdir -p "$peers_cache"
  if [ ! -x "$peers_cache/venv/bin/python" ]; then
    python3 -m venv "$peers_cache/venv"
    "$peers_cache/venv/bin/pip" install -q gguf numpy
  fi
  if [ ! -d "$peers_src" ]; then
    "$peers_cache/venv/bin/pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$peers_version" -d "$peers_cache/dl"
    tar -xzf "$peers_cache/dl/llama_cpp_python-$peers_version.tar.gz" -C "$peers_cache"
  fi
}
