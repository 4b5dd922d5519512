//! What a failure class most likely means on the agents' network, and what to change, in the
//! words of the vendor's network guide.
//!
//! Amazon Connect's administrator guide ("Set up your network", and "Troubleshooting issues with
//! the Contact Control Panel") names the usual culprits of softphone failures: UDP 3478 not
//! allowed outbound to the TURN endpoints (`TurnNlb-*.elb.{region}.amazonaws.com`), DNS that does
//! not resolve those names, a stateless firewall without the browser's ephemeral range
//! (49152–65535/UDP inbound from the `AMAZON_CONNECT` ranges), proxies whose WebSocket handling
//! breaks the signalling connection, and TLS-inspecting proxies whose certificate cache expires
//! mid-shift. [`diagnose`] maps a
//! failed call's class and detail to one of those causes, or to a plain statement of what the
//! class means when the guide has nothing network-specific to say.

use crate::record::FailureClass;

/// A section of the vendor's network guide (Amazon Connect administrator guide, "Set up your
/// network").
macro_rules! network_guide {
    ($anchor:literal) => {
        concat!(
            "https://docs.aws.amazon.com/connect/latest/adminguide/ccp-networking.html",
            $anchor
        )
    };
}

/// The likely cause of a failure and what to change, with where the guidance comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Diagnosis {
    /// A short name for the cause, e.g. "UDP 3478 blocked"; failures are grouped by it.
    pub cause: &'static str,
    /// One or two sentences on what happened, for a person who was not there.
    pub explanation: &'static str,
    /// What to change on the agents' network (or who to ask), as the vendor's guide puts it.
    /// Host names and commands are in `backticks`.
    pub remedy: &'static str,
    /// The sections of the vendor's guide the remedy comes from; empty when the guide says
    /// nothing about it (the remedy is then ours).
    pub references: &'static [Reference],
}

/// A section of the vendor's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// The page and section, as titled by the vendor.
    pub title: &'static str,
    /// The page's address, with the section's anchor.
    pub url: &'static str,
}

/// The likely cause of a call that failed with `class` and `detail` (the record's
/// [`Failure::detail`](crate::record::Failure::detail)), and its remedy.
///
/// The detail refines the class where the class alone is ambiguous: an ICE collection timeout
/// is a DNS restriction when the TURN name did not resolve and a blocked UDP 3478 otherwise; a
/// signalling failure that names a certificate is TLS inspection, one that names the WebSocket
/// upgrade is a proxy.
pub fn diagnose(class: FailureClass, detail: &str) -> Diagnosis {
    let detail = detail.to_ascii_lowercase();
    let mentions = |words: &[&str]| words.iter().any(|w| detail.contains(w));
    if mentions(&["certificate", "tls:", "unknownissuer", "badsignature"]) {
        return TLS_INSPECTION;
    }
    if mentions(&["stalled"]) {
        return SIGNALLING_STALLED;
    }
    if mentions(&["websocket upgrade", "proxy"]) {
        return PROXY_WEBSOCKET;
    }
    match class {
        FailureClass::IceCollectionTimeout if mentions(&["resolve", "dns", "name or service"]) => {
            DNS_RESTRICTED
        }
        FailureClass::IceCollectionTimeout => UDP_3478_BLOCKED,
        FailureClass::IceConnectionFailed => STATELESS_FIREWALL,
        FailureClass::SignallingConnectionFailure => SIGNALLING_UNREACHABLE,
        FailureClass::SignallingHandshakeFailure => SIGNALLING_HANDSHAKE,
        FailureClass::MediaTimeout => MEDIA_LOST,
        FailureClass::DtlsHandshakeFailure => DTLS_FAILED,
        FailureClass::TurnAuthFailure => TURN_AUTH,
        FailureClass::TurnAllocationFailure => TURN_ALLOCATION,
        FailureClass::NoRemoteIceCandidate
        | FailureClass::InvalidRemoteSdp
        | FailureClass::SetRemoteDescriptionFailure => BAD_ANSWER,
        FailureClass::AccessDenied => ACCESS_DENIED,
        FailureClass::UserBusy => USER_BUSY,
        FailureClass::CallNotFound => CALL_NOT_FOUND,
        FailureClass::TransferFailure | FailureClass::ConferenceFailure => THIRD_PARTY_LEG,
    }
}

const OPTION_1: Reference = Reference {
    title: "Set up your network › Option 1: domain allow list",
    url: network_guide!("#option1"),
};
const OPTION_2: Reference = Reference {
    title: "Set up your network › Option 2: IP address ranges",
    url: network_guide!("#option2"),
};
const STATELESS: Reference = Reference {
    title: "Set up your network › Stateless firewalls",
    url: network_guide!("#stateless-firewalls"),
};

const UDP_3478_BLOCKED: Diagnosis = Diagnosis {
    cause: "TURN unreachable on 3478/UDP",
    explanation: "The browser never got a relay candidate: its TURN requests to port 3478/UDP \
        went unanswered, so the softphone timed out collecting ICE candidates and the call was \
        missed. Either a firewall drops UDP to 3478 on the way out, or a stateless firewall drops \
        the answers on the way back to the browser's ephemeral port.",
    remedy: "Allow outbound 3478/UDP (send/receive) to `TurnNlb-*.elb.{region}.amazonaws.com` \
        (or the Region's listed NLB endpoints), or to the `AMAZON_CONNECT` IP ranges of \
        `ip-ranges.json` for GLOBAL and your Region. On a stateless firewall, also allow inbound \
        49152–65535/UDP from the `AMAZON_CONNECT` ranges.",
    references: &[OPTION_1, OPTION_2, STATELESS],
};

const DNS_RESTRICTED: Diagnosis = Diagnosis {
    cause: "DNS does not resolve the TURN names",
    explanation: "The site's DNS would not resolve the TURN server's name, so the browser had no \
        address to allocate a relay from.",
    remedy: "Allow DNS resolution of `TurnNlb-*.elb.{region}.amazonaws.com` (or add the Region's \
        NLB endpoints to the allow list). Check from the agent network with nslookup, e.g. \
        `nslookup TurnNlb-d76454ac48d20c1e.elb.us-east-1.amazonaws.com`.",
    references: &[Reference {
        title: "Set up your network › Allow DNS resolution for softphones",
        url: network_guide!("#allow-dns-resolution"),
    }],
};

const STATELESS_FIREWALL: Diagnosis = Diagnosis {
    cause: "Stateless firewall drops the media coming back",
    explanation: "The relay was allocated but no candidate pair connected: packets from the TURN \
        server to the browser's ephemeral port were dropped on the way in, as a stateless \
        firewall does when only 3478 is open.",
    remedy: "On a stateless firewall, also allow inbound 49152–65535/UDP (the browser's \
        ephemeral ports) from the `AMAZON_CONNECT` IP ranges, in addition to the outbound rules.",
    references: &[STATELESS],
};

const PROXY_WEBSOCKET: Diagnosis = Diagnosis {
    cause: "Proxy breaks the signalling WebSocket",
    explanation: "A web proxy between the CCP and the signalling endpoint refused or mangled the \
        WebSocket upgrade, so the softphone could not open its signalling channel.",
    remedy: "Bypass the proxy for the signalling domain (`rtc*.connect-telecom.{region}.\
        amazonaws.com` and `*.transport.connect.{region}.amazonaws.com`, 443/TCP outbound) or let \
        it pass WebSocket upgrades. The vendor warns that proxy WebSocket handling may impact \
        functionality: test before production.",
    references: &[OPTION_1],
};

const SIGNALLING_STALLED: Diagnosis = Diagnosis {
    cause: "Signalling connection stalled mid-call",
    explanation: "The signalling WebSocket opened and worked, then stopped carrying anything \
        without being closed (no FIN, no RST): the softphone's keep-alive went unanswered while \
        the media still flowed. A proxy or firewall dropped the connection's state on an idle \
        or session timeout without telling either end.",
    remedy: "Raise the idle and session timeouts of the proxies and firewalls on the path to \
        the signalling domain (`rtc*.connect-telecom.{region}.amazonaws.com`, \
        `*.transport.connect.{region}.amazonaws.com`, 443/TCP) above the longest call, or \
        bypass the proxy for those names. The vendor warns that proxy WebSocket handling may \
        impact functionality: test before production.",
    references: &[OPTION_1],
};

const TLS_INSPECTION: Diagnosis = Diagnosis {
    cause: "TLS inspection certificate expired",
    explanation: "A TLS-inspecting proxy or firewall presented a certificate the browser no \
        longer accepted — its certificate cache renewed during the agents' working time.",
    remedy: "Increase the proxy's SSL certificate cache timeout to cover an entire shift (for \
        8-hour shifts: 8 hours plus breaks and lunch), or exempt the Connect domains from \
        inspection.",
    references: &[Reference {
        title: "Set up your network › Port and protocol considerations",
        url: network_guide!("#port-considerations"),
    }],
};

const SIGNALLING_UNREACHABLE: Diagnosis = Diagnosis {
    cause: "Signalling endpoint unreachable",
    explanation: "The softphone could not open its signalling WebSocket (443/TCP) within 10 s and \
        3 tries: a firewall, proxy or DNS rule stands between the browser and the endpoint.",
    remedy: "Allow outbound 443/TCP to `rtc*.connect-telecom.{region}.amazonaws.com` and \
        `*.transport.connect.{region}.amazonaws.com`, and check the path with the vendor's \
        Endpoint Connectivity Tool.",
    references: &[Reference {
        title: "Troubleshooting issues with the Contact Control Panel (CCP)",
        url: "https://docs.aws.amazon.com/connect/latest/adminguide/troubleshooting.html",
    }],
};

const SIGNALLING_HANDSHAKE: Diagnosis = Diagnosis {
    cause: "Signalling handshake failed",
    explanation: "The signalling connection opened but the invite was refused or not answered in \
        time: a middlebox that delays or rewrites WebSocket frames, or a fault on the vendor's \
        side.",
    remedy: "Make sure no proxy inspects or buffers the signalling WebSocket (bypass it for the \
        signalling domain); if the path is clean, report the call ids to the vendor.",
    references: &[OPTION_1],
};

const MEDIA_LOST: Diagnosis = Diagnosis {
    cause: "Media stopped mid-call (dropped call)",
    explanation: "The call connected, then no audio arrived for the dead-air limit: an outage on \
        the path (VPN rekey, Wi-Fi handover, VDI host stall) or a firewall or NAT that stopped \
        passing the UDP flow.",
    remedy: "Look at the timeline chart for when the drops happened and match them with VPN \
        rekeys, Wi-Fi handovers or VDI stalls. The vendor's guide notes that remote agents' \
        issues are compounded by a VPN, and that fewer network hops to the Region help.",
    references: &[Reference {
        title: "Set up your network › Agents using Amazon Connect remotely",
        url: network_guide!("#remote-agents"),
    }],
};

const DTLS_FAILED: Diagnosis = Diagnosis {
    cause: "Media encryption handshake (DTLS) failed",
    explanation: "ICE connected but the DTLS handshake that sets up the SRTP keys did not finish: \
        its large packets (certificates) were lost, typically to an MTU or fragmentation problem \
        in a VPN tunnel, or to heavy loss.",
    remedy: "Check the path MTU through tunnels and that UDP fragments are not dropped; reduce \
        loss on the link.",
    references: &[],
};

const TURN_AUTH: Diagnosis = Diagnosis {
    cause: "TURN credentials rejected",
    explanation: "The TURN server rejected the softphone's credentials (401 or 441). The \
        credentials are short-lived: a workstation clock far off, or a middlebox rewriting \
        STUN/TURN messages, makes them fail.",
    remedy: "Check the agent workstations' clocks, and that nothing on the path rewrites UDP \
        3478 traffic.",
    references: &[],
};

const TURN_ALLOCATION: Diagnosis = Diagnosis {
    cause: "TURN server refused the allocation",
    explanation: "The TURN server answered but refused to allocate a relay (quota, capacity or a \
        forbidden address): usually not the agents' network.",
    remedy: "If it happens at every site, report it to the vendor with the TURN error code from \
        the call detail; if only at one site, check that its calls do not all leave through one \
        NAT address.",
    references: &[],
};

const BAD_ANSWER: Diagnosis = Diagnosis {
    cause: "Unusable answer from the far end",
    explanation: "The far end's answer had no ICE candidate or an SDP the browser could not \
        apply: a fault on the vendor's side or a middlebox rewriting signalling.",
    remedy: "Make sure no proxy rewrites the signalling WebSocket; otherwise report the call ids \
        to the vendor.",
    references: &[],
};

const ACCESS_DENIED: Diagnosis = Diagnosis {
    cause: "Agent not authorised",
    explanation: "The signalling server refused the agent (403): an expired login session or a \
        security profile without softphone permission. Not a network problem.",
    remedy: "Check the agents' login sessions and security profiles.",
    references: &[],
};

const USER_BUSY: Diagnosis = Diagnosis {
    cause: "Agent already on a call",
    explanation: "The signalling server answered 486: the agent was busy. A routing or staffing \
        matter, not the network.",
    remedy: "Check how many contacts each agent is offered at once.",
    references: &[],
};

const CALL_NOT_FOUND: Diagnosis = Diagnosis {
    cause: "Contact gone before it was answered",
    explanation: "The contact no longer existed when the agent answered (404): the caller hung \
        up or the contact timed out during a slow setup.",
    remedy: "Look at the setup-time chart: slow invite→answer phases point at signalling \
        latency through proxies or long WAN paths.",
    references: &[],
};

const THIRD_PARTY_LEG: Diagnosis = Diagnosis {
    cause: "Transfer or conference leg failed",
    explanation: "The customer leg did not survive the transfer, or the conference did not mix \
        all three parties. The vendor asks for transfers and conferences to be part of the \
        200-call test.",
    remedy: "Check that the customer's media still flows after the agent leaves (UDP idle \
        timeouts on firewalls and NATs); if the path is clean, report the call ids to the vendor.",
    references: &[OPTION_1],
};
