"""OVA appliances made by the tests: an OVF descriptor in the shape VMware's ovftool (OVF 1.0,
capacity in GiB units, `SHA256(file)= hex` manifest) or VirtualBox (OVF 1.0 with byte
capacities, `SHA1 (file) = hex`) writes it, per DMTF DSP0243 (OVF 1.x/2.x: References,
DiskSection, VirtualSystem with a VirtualHardwareSection of CIM RASD items), then tar'ed with
the descriptor first and the manifest second, as the specification orders them."""

from __future__ import annotations

import gzip
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OvaDisk:
    path: Path  # the disk file as it goes into the OVA
    capacity: int  # bytes
    gzip: bool = False  # stored as a gzip-compressed reference


def ovf_descriptor(name: str, disks: list[tuple[str, OvaDisk]], *, style: str = "vmware",
                   cpus: int = 2, memory_mib: int = 2048) -> str:
    """`disks`: (file name in the OVA, disk)."""
    files, disk_items, hw = [], [], []
    for i, (href, d) in enumerate(disks, 1):
        size = Path(d.path).stat().st_size
        comp = ' ovf:compression="gzip"' if d.gzip else ""
        files.append(f'    <File ovf:href="{href}" ovf:id="file{i}" ovf:size="{size}"{comp}/>')
        if style == "vmware" and d.capacity % (1 << 30) == 0:
            cap = f'ovf:capacity="{d.capacity >> 30}" ovf:capacityAllocationUnits="byte * 2^30"'
        elif style == "vmware":
            cap = f'ovf:capacity="{d.capacity}" ovf:capacityAllocationUnits="byte"'
        else:
            cap = f'ovf:capacity="{d.capacity}"'
        disk_items.append(
            f'    <Disk {cap} ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:format='
            '"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>')
        hw.append(f"""      <Item>
        <rasd:AddressOnParent>{i - 1}</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk {i}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk{i}</rasd:HostResource>
        <rasd:InstanceID>{10 + i}</rasd:InstanceID>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>""")
    vbox = ' xmlns:vbox="http://www.virtualbox.org/ovf/machine"' if style == "vbox" else ""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"{vbox}>
  <References>
{chr(10).join(files)}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{chr(10).join(disk_items)}
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="101">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{memory_mib}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory_mib}</rasd:VirtualQuantity>
      </Item>
{chr(10).join(hw)}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def make_ova(out: Path, name: str, disks: list[OvaDisk], *, style: str = "vmware",
             manifest: bool = True, bad_digest_for: str | None = None,
             pax: bool = False) -> list[str]:
    """Write `out` and return the names of its disk members. `bad_digest_for`: the member
    whose manifest digest is wrong."""
    work = out.parent / f"{out.name}.d"
    work.mkdir()
    members = []
    for i, d in enumerate(disks, 1):
        href = f"{name}-disk{i}.vmdk" + (".gz" if d.gzip else "")
        data = Path(d.path).read_bytes()
        (work / href).write_bytes(gzip.compress(data, 1) if d.gzip else data)
        members.append((href, OvaDisk(work / href, d.capacity, d.gzip)))
    (work / f"{name}.ovf").write_text(ovf_descriptor(name, members, style=style))
    order = [f"{name}.ovf"]
    if manifest:
        algo = "SHA256" if style == "vmware" else "SHA1"
        lines = []
        for f in [f"{name}.ovf", *(m for m, _ in members)]:
            digest = hashlib.new(algo.lower(), (work / f).read_bytes()).hexdigest()
            if f == bad_digest_for:
                digest = ("0" if digest[0] != "0" else "1") + digest[1:]
            lines.append(f"{algo}({f})= {digest}" if style == "vmware"
                         else f"{algo} ({f}) = {digest}")
        (work / f"{name}.mf").write_text("\n".join(lines) + "\n")
        order.append(f"{name}.mf")
    order += [m for m, _ in members]
    fmt = ["--format=pax"] if pax else ["--format=ustar"]
    subprocess.run(["tar", "-cf", str(out), *fmt, "-C", str(work), *order], check=True)
    return [m for m, _ in members]
