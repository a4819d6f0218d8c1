//! The Lua policy as the engine asks it ([`egress_policy::Policy`]): each call is
//! the cached, typed call of the same name, its error kept whole (its text is
//! what the client's `4xx` and the log say).

use crate::events::{GET_LISTENER_DOMAIN, SMTP_SERVER_AUTH_PLAIN, SMTP_SERVER_MESSAGE_RECEIVED};
use crate::Policy;
use egress_policy::MessageInFlight;
use egress_policy::{Boxed, Declarations, PolicyError};
use egress_source::{EgressPathConfig, EgressPool, EgressSource, ListenerDomain, QueueConfig};
use std::sync::Arc;

fn answer<'a, T: Send + 'a>(
    call: Boxed<'a, Result<T, crate::PolicyError>>,
) -> Boxed<'a, Result<T, PolicyError>> {
    Box::pin(async move { call.await.map_err(PolicyError::new) })
}

impl egress_policy::Policy for Policy {
    fn declarations(&self) -> Declarations {
        let init = self.init();
        Declarations {
            esmtp_listeners: init.esmtp_listeners,
            resolver: init.resolver,
            redis_throttles: init.redis_throttles,
            spool: init.spool,
        }
    }

    fn queue_config<'a>(
        &'a self,
        domain: &'a str,
        tenant: Option<&'a str>,
        campaign: Option<&'a str>,
        routing_domain: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<QueueConfig>, PolicyError>> {
        answer(Policy::queue_config(
            self,
            domain,
            tenant,
            campaign,
            routing_domain,
        ))
    }

    fn egress_pool<'a>(&'a self, name: &'a str) -> Boxed<'a, Result<Arc<EgressPool>, PolicyError>> {
        answer(Policy::egress_pool(self, name))
    }

    fn egress_source<'a>(
        &'a self,
        name: &'a str,
    ) -> Boxed<'a, Result<Arc<EgressSource>, PolicyError>> {
        answer(Policy::egress_source(self, name))
    }

    fn egress_path_config<'a>(
        &'a self,
        domain: &'a str,
        source: &'a str,
        site: Option<&'a str>,
    ) -> Boxed<'a, Result<Arc<EgressPathConfig>, PolicyError>> {
        answer(Policy::egress_path_config(self, domain, source, site))
    }

    fn authenticates(&self) -> bool {
        self.has_handler(SMTP_SERVER_AUTH_PLAIN)
    }

    fn auth_plain<'a>(
        &'a self,
        authz: &'a str,
        authc: &'a str,
        password: &'a str,
        conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<Option<bool>, PolicyError>> {
        answer(Policy::auth_plain(self, authz, authc, password, conn_meta))
    }

    fn handles_message_received(&self) -> bool {
        self.has_handler(SMTP_SERVER_MESSAGE_RECEIVED)
    }

    fn message_received<'a>(
        &'a self,
        message: MessageInFlight,
        conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<MessageInFlight, PolicyError>> {
        answer(Policy::message_received(self, message, conn_meta))
    }

    fn names_listener_domains(&self) -> bool {
        self.has_handler(GET_LISTENER_DOMAIN)
    }

    fn listener_domain<'a>(
        &'a self,
        domain: &'a str,
        listener: &'a str,
        conn_meta: &'a [(&'a str, String)],
    ) -> Boxed<'a, Result<Option<ListenerDomain>, PolicyError>> {
        answer(Policy::listener_domain(self, domain, listener, conn_meta))
    }
}
