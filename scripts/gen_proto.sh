#!/usr/bin/env bash
# Regenerate the Python protobuf/gRPC code for petcd/proto/**/*.proto.
#
# The generated *_pb2.py, *_pb2.pyi and *_pb2_grpc.py files are committed: nothing is
# generated at install time. Rerun this script (from anywhere) after editing a .proto
# file and commit the results together with the .proto change.
#
# We pin grpcio-tools 1.62.3 (bundled protoc 25.1): its output carries no runtime version
# checks, so it imports with protobuf >= 4.25 (tested with 7.x) and grpcio >= 1.60.
# Newer grpcio-tools emit code that refuses to load on a protobuf/grpcio runtime older
# than the generator. To get the pinned generator without touching the main environment:
#
#   python3 -m venv /tmp/grpc-tools-1.62 && /tmp/grpc-tools-1.62/bin/pip install grpcio-tools==1.62.3
#   PYTHON=/tmp/grpc-tools-1.62/bin/python scripts/gen_proto.sh
#
# Set ALLOW_ANY_PROTOC=1 to run with whatever grpc_tools is installed (not for commits).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
WANT="libprotoc 25.1"

have="$("$PYTHON" -m grpc_tools.protoc --version)"
if [[ "$have" != "$WANT" && "${ALLOW_ANY_PROTOC:-0}" != 1 ]]; then
    echo "gen_proto.sh: $PYTHON has '$have', want '$WANT' (grpcio-tools==1.62.3); see header" >&2
    exit 1
fi

mapfile -t protos < <(find petcd/proto -name '*.proto' | sort)
# Only files that define services get a *_pb2_grpc.py module.
mapfile -t services < <(grep -l '^service ' "${protos[@]}")

find petcd/proto \( -name '*_pb2.py' -o -name '*_pb2.pyi' -o -name '*_pb2_grpc.py' \) -delete
# -I. makes the import path petcd/proto/..., so the generated modules import each other
# as `from petcd.proto.<pkg> import <name>_pb2`.
"$PYTHON" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. "${protos[@]}"
"$PYTHON" -m grpc_tools.protoc -I. --grpc_python_out=. "${services[@]}"
echo "generated code for ${#protos[@]} proto files (${#services[@]} with services)"
