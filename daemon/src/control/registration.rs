//! What a control server's answer to a registration means and what the
//! client does next: sans-IO, the decisions Go's client makes.

use tailnet_auth::Secret;

use super::server_text::ServerText;
use super::tailcfg::RegisterResponse;

/// The server's answer to one registration.
#[derive(Debug)]
pub enum Answer {
    Response(RegisterResponse),
    /// HTTP 401/403: rscale answers a bad or expired auth key, or a node key
    /// it does not know, this way rather than with `RegisterResponse.Error`.
    Denied {
        status: u16,
        body: ServerText,
    },
}

/// Why the server will not register the identity as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An auth key was sent and the server still answered 401/403.
    #[error("HTTP {status}: {body}")]
    Denied { status: u16, body: ServerText },
    #[error("the control server reports even a new node key as expired")]
    NewKeyExpired,
    /// The server's own reason (`RegisterResponse.Error`).
    #[error("{0}")]
    Server(ServerText),
    #[error("the auth key was not accepted (server asks for interactive login)")]
    InteractiveLogin,
    #[error("machine not authorized")]
    NotAuthorized,
}

/// What a registration does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Accepted,
    /// Present a new node key (`OldNodeKey` = the current one).
    NewNodeKey,
    /// Register again with a fresh auth key.
    SendAuthKey,
    Refused(Refusal),
}

/// The next step after `answer`: `sent_key` is the auth key this
/// registration sent last, if it sent one (kept out of the refusal should
/// the server echo it), `regenerated` whether a new node key was already
/// tried.
pub fn next_step(answer: Answer, sent_key: Option<&Secret>, regenerated: bool) -> Step {
    let response = match answer {
        Answer::Denied { status, body } if sent_key.is_some() => {
            return Step::Refused(Refusal::Denied { status, body })
        }
        Answer::Denied { .. } => return Step::SendAuthKey,
        Answer::Response(response) => response,
    };
    if response.error.is_empty() && response.nodekeyexpired {
        // The key presented is expired: present a new one, once; a new key
        // reported expired too means the server will take none.
        return if regenerated {
            Step::Refused(Refusal::NewKeyExpired)
        } else {
            Step::NewNodeKey
        };
    }
    if response.error.is_empty() && response.machineauthorized && response.authurl.is_empty() {
        return Step::Accepted;
    }
    if sent_key.is_none() {
        // The server does not know (or no longer trusts) this node key.
        return Step::SendAuthKey;
    }
    Step::Refused(if !response.error.is_empty() {
        Refusal::Server(ServerText::redacted(response.error.as_bytes(), sent_key))
    } else if !response.authurl.is_empty() {
        Refusal::InteractiveLogin
    } else {
        Refusal::NotAuthorized
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(json: &str) -> Answer {
        Answer::Response(crate::control::json::from_slice(json.as_bytes()).unwrap())
    }

    #[test]
    fn registration_steps_follow_the_protocol() {
        let key = Secret::new("rsk_test");
        let sent = Some(&key);
        let ok = r#"{"MachineAuthorized": true}"#;
        assert_eq!(next_step(response(ok), None, false), Step::Accepted);
        assert_eq!(next_step(response(ok), sent, true), Step::Accepted);

        // An expired key is replaced once, with or without an auth key.
        let expired = r#"{"NodeKeyExpired": true}"#;
        assert_eq!(next_step(response(expired), None, false), Step::NewNodeKey);
        assert_eq!(next_step(response(expired), sent, false), Step::NewNodeKey);
        assert!(matches!(
            next_step(response(expired), None, true),
            Step::Refused(r) if r.to_string().contains("even a new node key")
        ));

        // Unknown key without an auth key: send one; with one: refused.
        let denied = || Answer::Denied {
            status: 401,
            body: ServerText::redacted(b"unauthorized: invalid or expired auth key", None),
        };
        assert_eq!(next_step(denied(), None, false), Step::SendAuthKey);
        let Step::Refused(refusal) = next_step(denied(), sent, false) else {
            panic!("a denied auth key is a refusal");
        };
        assert_eq!(
            refusal.to_string(),
            "HTTP 401: unauthorized: invalid or expired auth key"
        );
        assert!(matches!(refusal, Refusal::Denied { status: 401, .. }));

        // Interactive login or an unauthorized machine.
        let url = r#"{"AuthURL": "https://login.example/a"}"#;
        assert_eq!(next_step(response(url), None, false), Step::SendAuthKey);
        assert!(matches!(
            next_step(response(url), sent, false),
            Step::Refused(r) if r.to_string().contains("interactive login")
        ));
        let pending = r#"{"MachineAuthorized": false}"#;
        assert!(matches!(
            next_step(response(pending), sent, false),
            Step::Refused(r) if r.to_string().contains("not authorized")
        ));

        // The server's own error wins over everything else.
        let error = r#"{"Error": "node limit reached", "NodeKeyExpired": true}"#;
        let Step::Refused(refusal) = next_step(response(error), sent, false) else {
            panic!("the server's error is a refusal");
        };
        assert_eq!(refusal.to_string(), "node limit reached");
    }

    #[test]
    fn a_server_error_never_repeats_the_auth_key() {
        let key = Secret::new("hunter2hunter2");
        let error = r#"{"Error": "auth key hunter2hunter2 is expired"}"#;
        let Step::Refused(refusal) = next_step(response(error), Some(&key), false) else {
            panic!("the server's error is a refusal");
        };
        let text = refusal.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.starts_with("auth key ") && text.ends_with(" is expired"),
            "{text}"
        );
    }
}
