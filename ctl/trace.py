"""`nicteam trace` as text: a NIC's trace dict rendered like ``ovs-appctl ofproto/trace``."""

from __future__ import annotations

from typing import Any


def format_trace(d: dict[str, Any]) -> str:
    """`Trace.as_dict()` as text, like ``ovs-appctl ofproto/trace``: one block per step."""
    pkt = d.get("packet", {})
    ing = d.get("ingress", {})
    lines = [f"Flow: {_flow_text(pkt)}"]
    lines.append(
        f"Ingress: {ing.get('kind', '?')} {ing.get('port', '?')} ({ing.get('name', '?')})"
        f" on {d.get('nic', '?')}"
    )
    lines.append("")
    n = 0
    for s in d.get("steps", []):
        if s.get("step") == "ingress":
            continue
        n += 1
        text = _step_text(s)
        lines.append(f"{n:2d}. {text[0]}")
        lines.extend(f"    {more}" for more in text[1:])
    lines.append("")
    for r in d.get("records", []):  # the fast path names no record in its step: say it here
        lines.append(f"Conntrack ({r.get('status', '?')}): {_record_text(r)}")
    tier = d.get("tier") or "none"
    rule = d.get("rule") or "-"
    if d.get("verdict") == "forward":
        outs = ", ".join(_egress_text(e) for e in d.get("egress", [])) or "nowhere"
        lines.append(f"Final: forward via {outs}")
        lines.append(f"Datapath action: forward (tier {tier}, rule {rule})")
    else:
        answers = [e for e in d.get("egress", []) if e.get("what") != "frame"]
        lines.append(f"Final: drop, reason {d.get('reason', '?')}")
        if answers:
            lines.append("  answered with " + ", ".join(_egress_text(e) for e in answers))
        lines.append(f"Datapath action: drop (tier {tier}, rule {rule})")
    return "\n".join(lines)


def _flow_text(pkt: dict[str, Any]) -> str:
    if "malformed" in pkt:
        return f"malformed frame ({pkt['malformed']}), {pkt.get('len', 0)} bytes"
    l2 = f"{pkt.get('src_mac', '?')} > {pkt.get('dst_mac', '?')}"
    if pkt.get("vlan"):
        l2 += f" vlan {pkt['vlan']}"
    if "proto" not in pkt:
        if "arp_op" in pkt:
            op = "request" if pkt["arp_op"] == 1 else "reply"
            return f"arp {op} {pkt['arp_spa']} asks {pkt['arp_tpa']}, {l2}"
        return f"ethertype 0x{pkt.get('ethertype', 0):04x}, {l2}"
    proto, src, dst = pkt["proto"], pkt.get("src", "?"), pkt.get("dst", "?")
    if proto in ("tcp", "udp"):
        flow = f"{proto} {_bracket(src)}:{pkt.get('sport')} > {_bracket(dst)}:{pkt.get('dport')}"
        if "flags" in pkt:
            flow += f" flags={pkt['flags']}"
    elif "icmp_type" in pkt:
        flow = f"{proto} {src} > {dst} type {pkt['icmp_type']} code {pkt.get('icmp_code', 0)}"
    else:
        flow = f"{proto} {src} > {dst}"
    if pkt.get("fragment"):
        flow += " (fragment)"
    return f"{flow}, {l2}, {pkt.get('len', 0)} bytes"


def _yes(b: Any) -> str:
    return "yes" if b else "no"


def _record_text(r: dict[str, Any]) -> str:
    flags = f"sw_ok={_yes(r.get('sw_ok'))} hw_ok={_yes(r.get('hw_ok'))}"
    if not r.get("hw_ok") and r.get("hw_capable"):
        flags += " (hw once established)"
    src, dst = _bracket(r.get("src")), _bracket(r.get("dst"))
    if r.get("proto") in ("tcp", "udp"):
        tup = f"{r['proto']} {src}:{r.get('sport')} > {dst}:{r.get('dport')}"
    else:
        tup = f"{r.get('proto')} {src} > {dst} id {r.get('sport')}"
    return f"zone {r.get('zone')} {tup} {r.get('state')} {flags} tier={r.get('tier')}"


def _bracket(addr: Any) -> str:
    return f"[{addr}]" if ":" in str(addr) else str(addr)


def _step_text(s: dict[str, Any]) -> list[str]:
    kind = s.get("step")
    where = f"vpid {s.get('vpid')} {str(s.get('direction', '')).replace('_', '-')}"
    if kind == "fast":
        if not s.get("eligible", True):
            return ["fast path: frame not eligible (SYN/FIN/RST, fragment, ...): slow path"]
        if s.get("hit"):
            return [f"fast path: {s['tier']} hit, rule {s.get('rule')} ({s.get('packets')} pkts)"]
        stale = " (stale entry: map/team/topology changed)" if s.get("stale") else ""
        return [f"fast path: {s.get('tier')} miss{stale}"]
    if kind == "parse":
        return [f"parse: {s.get('reason')}"]
    if kind == "arp":
        return [f"arp in {s.get('segment')}: {'answered here' if s.get('answered') else 'passed'}"]
    if kind == "learn":
        ip = f" at {s['ip']}" if s.get("ip") else ""
        return [f"learn: {s.get('mac')}{ip} in {s.get('segment')} (by the pipeline, not the trace)"]
    if kind == "team_ingress":
        ok = "accepted" if s.get("accepted") else "not accepted"
        return [f"team ingress: {ok} on {s.get('uplink')}"]
    if kind == "switch":
        dst = s.get("dst_mac")
        if s.get("dst_vpid", -1) < 0:
            return [f"switch {s.get('segment')}: {dst} is not a host VM -> network"]
        return [
            f"switch {s.get('segment')}: {dst} -> vpid {s.get('dst_vpid')} ({s.get('name')})"
            f" homed on {s.get('nic') or '?'}"
        ]
    if kind == "handover":
        return [
            f"handover: vpid {s.get('vpid')} lives on {s.get('nic')}; its to-VM firewall runs there"
        ]
    if kind == "team":
        if not s.get("uplink"):
            return [f"team {s.get('policy')}: no live uplink"]
        acct = " (counts toward its load)" if s.get("accounts") else ""
        return [
            f"team {s.get('policy')}: vpid {s.get('vpid')} -> uplink {s.get('uplink')}"
            f" on {s.get('nic')}{acct}"
        ]
    if kind == "firewall":
        return [f"firewall {where}: IP fragment, dropped"]
    if kind == "conntrack":
        if not s.get("found"):
            return [f"conntrack {where}: no record, rules decide"]
        r = s.get("record", {})
        lines = [
            f"conntrack {where}: {r.get('status')} record, "
            f"{'reply' if r.get('reply') else 'original'} direction, rule {r.get('rule')}",
            _record_text(r),
        ]
        if not r.get("valid"):
            lines.append(f"invalid in state {r.get('state')}")
        elif r.get("next_state") != r.get("state"):
            lines.append(f"-> {r.get('next_state')}")
        if s.get("punt"):
            lines.append("punted from the fast tiers (TCP SYN/FIN/RST or a miss)")
        if s.get("evict"):
            lines.append("leaves ESTABLISHED: its fast-tier entries would be evicted")
        return lines
    if kind == "rule":
        extra = "".join(f" +{k}" for k in ("inspect", "sw_only") if s.get(k))
        prio = f" priority {s['priority']}" if s.get("priority", -1) >= 0 else ""
        return [
            f"rule {s.get('rule')!r}{prio} ({where}, segment {s.get('segment')}):"
            f" {s.get('action')}{extra}"
        ]
    if kind == "ct_create":
        if not s.get("created"):
            return [f"conntrack {where}: no record created ({s.get('reason')})"]
        return [f"conntrack {where}: would create", _record_text(s.get("record", {}))]
    if kind == "transmit":
        return [f"transmit handover on {s.get('uplink')}: {'ok' if s.get('ok') else 'refused'}"]
    if kind == "flood":
        return [f"flood in {s.get('segment')}: every other VM and the network"]
    if kind == "install":
        tiers = [t for t in ("eswitch", "cache") if s.get(t)]
        if tiers:
            more = f" ({s['why']})" if s.get("why") else ""
            return [f"would install in {' and '.join(tiers)}{more}"]
        return [f"no fast-tier install: {s.get('why')}"]
    if kind == "drop":
        return [f"drop: {s.get('reason')}" + (f" (rule {s['rule']})" if s.get("rule") else "")]
    return [" ".join(f"{k}={v}" for k, v in s.items())]


def _egress_text(e: dict[str, Any]) -> str:
    out = e.get("out")
    if out == "vf":
        where = f"vf {e.get('port')} ({e.get('name')})"
    elif out == "uplink":
        where = f"uplink {e.get('name')}"
    elif out == "peer_deliver":
        where = f"peer_deliver to {e.get('nic')} vpid {e.get('port')} ({e.get('name')})"
    else:
        where = f"peer_transmit to {e.get('nic')} uplink {e.get('name')}"
    if e.get("vlan"):
        where += f" vlan {e['vlan']}"
    if e.get("what", "frame") != "frame":
        where += f" [{e['what']}]"
    return where
