"""A CRI v1 client for the tests: what kubelet sends a container runtime, over gRPC.

The messages come from tests/integration/cri_api.proto (the part of k8s.io/cri-api's v1 API
the tests use, same field numbers), compiled by grpcio-tools' protoc into a temporary
directory when first needed; nothing generated is kept in the tree. Calls go through a plain
gRPC channel by their full method names (``/runtime.v1.RuntimeService/RunPodSandbox``), the
request and response types read from the compiled service descriptors.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

PROTO = Path(__file__).with_name("cri_api.proto")


class CriError(AssertionError):
    """A CRI call failed: the method, the gRPC status and the runtime's message."""

    def __init__(self, method: str, code: str, details: str) -> None:
        super().__init__(f"{method}: {code}: {details}")
        self.method, self.code, self.details = method, code, details


@functools.cache
def api() -> ModuleType:
    """The compiled messages of cri_api.proto (compiled once per test process)."""
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="cnipy-cri-"))
    try:
        rc = protoc.main(["protoc", f"-I{PROTO.parent}", f"--python_out={out}", str(PROTO)])
        assert rc == 0, f"protoc failed on {PROTO} ({rc})"
        spec = importlib.util.spec_from_file_location("cri_api_pb2", out / "cri_api_pb2.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        shutil.rmtree(out, ignore_errors=True)


@dataclass
class PodSpec:
    """What kubelet puts in a PodSandboxConfig, reduced to what the tests vary."""

    name: str
    namespace: str = "default"
    uid: str = ""
    host_ports: dict[int, int] = field(default_factory=dict)  # host port -> container port (TCP)
    cgroup_parent: str = ""
    log_directory: str = ""


class Cri:
    """RuntimeService and ImageService of a CRI runtime listening on a unix socket."""

    def __init__(self, socket: str, timeout: float = 120) -> None:
        import grpc

        self.pb = api()
        self.timeout = timeout
        self._grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket}")

    def close(self) -> None:
        self.channel.close()

    def call(self, service: str, method: str, timeout: float | None = None, **fields: Any) -> Any:
        """One unary RPC; ``fields`` build its request message. Raises CriError."""
        desc = self.pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        request_type = getattr(self.pb, desc.input_type.name)
        response_type = getattr(self.pb, desc.output_type.name)
        stub = self.channel.unary_unary(
            f"/{desc.containing_service.full_name}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return stub(request_type(**fields), timeout=timeout or self.timeout)
        except self._grpc.RpcError as exc:
            raise CriError(method, exc.code().name, exc.details()) from None

    def runtime(self, method: str, **fields: Any) -> Any:
        return self.call("RuntimeService", method, **fields)

    # ------------------------------------------------------------ what kubelet does

    def wait_ready(self, timeout: float = 10) -> None:
        """Version, then Status until RuntimeReady and NetworkReady (the runtime found a CNI
        config), as kubelet does before it runs pods."""
        self.call("RuntimeService", "Version", timeout=timeout, version="v1")
        conditions = {c.type: (c.status, c.message) for c in self.runtime("Status").status.conditions}
        assert all(ok for ok, _ in conditions.values()) and {"RuntimeReady", "NetworkReady"} <= set(conditions), (
            conditions
        )

    def image_present(self, image: str) -> bool:
        return bool(self.call("ImageService", "ImageStatus", image=self.pb.ImageSpec(image=image)).image.id)

    def sandbox_config(self, pod: PodSpec) -> Any:
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(
                name=pod.name, uid=pod.uid or f"uid-{pod.name}", namespace=pod.namespace, attempt=0
            ),
            hostname=pod.name,
            log_directory=pod.log_directory,
            port_mappings=[
                pb.PortMapping(protocol=pb.TCP, container_port=c, host_port=h) for h, c in pod.host_ports.items()
            ],
            labels={"io.kubernetes.pod.name": pod.name, "io.kubernetes.pod.namespace": pod.namespace},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=pod.cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)
                ),
            ),
        )

    def run_pod(self, pod: PodSpec) -> str:
        """RunPodSandbox: the pod's sandbox with its network (the CNI ADD); its ID."""
        return str(self.runtime("RunPodSandbox", config=self.sandbox_config(pod)).pod_sandbox_id)

    def start_container(self, pod_id: str, pod: PodSpec, name: str, image: str, command: list[str]) -> str:
        """CreateContainer + StartContainer of ``command`` in the pod; the container's ID."""
        pb = self.pb
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name, attempt=0),
            image=pb.ImageSpec(image=image),
            command=command,
            log_path=f"{name}.log" if pod.log_directory else "",
            labels={"io.kubernetes.container.name": name},
            linux=pb.LinuxContainerConfig(
                security_context=pb.LinuxContainerSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD)
                )
            ),
        )
        cid = str(
            self.runtime(
                "CreateContainer", pod_sandbox_id=pod_id, config=config, sandbox_config=self.sandbox_config(pod)
            ).container_id
        )
        self.runtime("StartContainer", container_id=cid)
        return cid

    def pod_status(self, pod_id: str) -> tuple[Any, dict[str, Any]]:
        """PodSandboxStatus (verbose): the status message and the runtime's info document."""
        resp = self.runtime("PodSandboxStatus", pod_sandbox_id=pod_id, verbose=True)
        return resp.status, json.loads(resp.info.get("info") or "{}")

    def pod_ip(self, pod_id: str) -> str:
        return str(self.pod_status(pod_id)[0].network.ip)

    def pod_netns(self, pod_id: str) -> str:
        """The path of the pod's network namespace, from the sandbox's runtime spec."""
        spec = self.pod_status(pod_id)[1]["runtimeSpec"]
        return next(str(ns["path"]) for ns in spec["linux"]["namespaces"] if ns["type"] == "network")

    def exec(self, container_id: str, *cmd: str, timeout: int = 10) -> tuple[int, str, str]:
        """ExecSync: (exit code, stdout, stderr)."""
        resp = self.runtime("ExecSync", container_id=container_id, cmd=list(cmd), timeout=timeout)
        return int(resp.exit_code), resp.stdout.decode(errors="replace"), resp.stderr.decode(errors="replace")

    def stop_pod(self, pod_id: str) -> None:
        self.runtime("StopPodSandbox", pod_sandbox_id=pod_id)

    def remove_pod(self, pod_id: str) -> None:
        self.runtime("RemovePodSandbox", pod_sandbox_id=pod_id)

    def pods(self) -> list[str]:
        return [str(p.id) for p in self.runtime("ListPodSandbox").items]

    def containers(self) -> list[str]:
        return [str(c.id) for c in self.runtime("ListContainers").containers]
