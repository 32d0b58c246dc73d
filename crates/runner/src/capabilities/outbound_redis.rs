//! Spin's outbound Redis (`fermyon:spin/redis@2.0.0`), as Spin's `factor-outbound-redis`:
//! connections only to addresses in `allowed_outbound_hosts`, one shared reconnecting
//! connection per address, and a client span per command under the guest's active span.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue as Attribute;
use tokio::sync::Mutex;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use super::allowed_hosts::AllowedHosts;
use super::otel::{HostSpan, Parent, TraceScope};
use crate::redis_conn::{retrying, Repeat};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spin-shop:worlds/outbound-redis",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/redis.connection": super::Connection,
        },
    });
}

use bindings::fermyon::spin2_0_0::redis as outbound_redis;

/// The app's outbound Redis connections: one reconnecting manager per address.
#[derive(Default)]
pub struct Connections(Mutex<HashMap<String, redis::aio::ConnectionManager>>);

impl Connections {
    async fn get(&self, address: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
        let mut connections = self.0.lock().await;
        if let Some(c) = connections.get(address) {
            return Ok(c.clone());
        }
        let (_, manager) = crate::redis_conn::manager(address)?;
        connections.insert(address.to_owned(), manager.clone());
        Ok(manager)
    }
}

/// An opened connection (a handle on the shared one for its address).
pub struct Connection {
    manager: redis::aio::ConnectionManager,
}

/// The outbound Redis state of one instance.
pub struct OutboundRedis {
    component: String,
    allowed: AllowedHosts,
    connections: Arc<Connections>,
    table: ResourceTable,
    trace: TraceScope,
}

impl OutboundRedis {
    pub fn new(
        component: &str,
        allowed: AllowedHosts,
        connections: Arc<Connections>,
        trace: TraceScope,
    ) -> OutboundRedis {
        OutboundRedis {
            component: component.to_owned(),
            allowed,
            connections,
            table: ResourceTable::new(),
            trace,
        }
    }

    fn connection(
        &self,
        conn: &Resource<Connection>,
    ) -> wasmtime::Result<redis::aio::ConnectionManager> {
        Ok(self.table.get(conn)?.manager.clone())
    }

    fn span(&self, name: impl Into<std::borrow::Cow<'static, str>>) -> HostSpan {
        self.trace.span(
            name,
            SpanKind::Client,
            Parent::ActiveGuestSpan,
            vec![Attribute::new("db.system.name", "redis")],
        )
    }

    /// A command for the connection's shared link, in a span named after the command
    /// (as Spin names them: `PUBLISH`, `GET`...; `execute`'s after the command it runs).
    /// Owned, so that no borrow of the instance state (which is not `Sync`) is held
    /// while it is sent.
    fn command(
        &self,
        conn: &Resource<Connection>,
        name: impl Into<std::borrow::Cow<'static, str>>,
        repeat: Repeat,
        cmd: redis::Cmd,
    ) -> wasmtime::Result<Command> {
        Ok(Command {
            span: self.span(name),
            manager: self.connection(conn)?,
            repeat,
            cmd,
        })
    }
}

struct Command {
    span: HostSpan,
    manager: redis::aio::ConnectionManager,
    repeat: Repeat,
    cmd: redis::Cmd,
}

/// Sends `command` on its reconnecting link (see [`retrying`]).
async fn send<T: redis::FromRedisValue>(command: Command) -> Result<T, outbound_redis::Error> {
    let Command {
        mut span,
        manager,
        repeat,
        cmd,
    } = command;
    let result = retrying(repeat, || {
        let mut manager = manager.clone();
        let cmd = cmd.clone();
        async move { cmd.query_async(&mut manager).await }
    })
    .await;
    if let Err(e) = &result {
        span.fail(e.to_string());
    }
    result.map_err(|e| {
        if e.kind() == redis::ErrorKind::UnexpectedReturnType
            || e.to_string().contains("not an integer")
        {
            outbound_redis::Error::TypeError
        } else {
            outbound_redis::Error::Other(e.to_string())
        }
    })
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    state: fn(&mut T) -> &mut OutboundRedis,
) -> anyhow::Result<()> {
    outbound_redis::add_to_linker::<T, HasSelf<OutboundRedis>>(linker, state)?;
    Ok(())
}

impl outbound_redis::Host for OutboundRedis {}

impl outbound_redis::HostConnection for OutboundRedis {
    async fn open(
        &mut self,
        address: String,
    ) -> wasmtime::Result<Result<Resource<Connection>, outbound_redis::Error>> {
        let mut span = self.span("spin_outbound_redis.open_connection");
        let shown = crate::redis_conn::redact(&address);
        if !self.allowed.allows_url(&address) {
            tracing::warn!(
                component = %self.component,
                address = shown,
                "outbound Redis denied: not in allowed_outbound_hosts"
            );
            span.fail(format!("{shown} is not in allowed_outbound_hosts"));
            return Ok(Err(outbound_redis::Error::InvalidAddress));
        }
        match self.connections.get(&address).await {
            Ok(manager) => Ok(Ok(self.table.push(Connection { manager })?)),
            Err(e) => {
                span.fail(e.to_string());
                Ok(Err(outbound_redis::Error::InvalidAddress))
            }
        }
    }

    async fn publish(
        &mut self,
        conn: Resource<Connection>,
        channel: String,
        payload: Vec<u8>,
    ) -> wasmtime::Result<Result<(), outbound_redis::Error>> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(payload);
        let result = Ok::<_, wasmtime::Error>(
            send::<i64>(self.command(&conn, "PUBLISH", Repeat::Once, cmd)?).await,
        )?;
        tracing::debug!(component = %self.component, channel, ?result, "outbound Redis PUBLISH");
        Ok(result.map(drop))
    }

    async fn get(
        &mut self,
        conn: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, outbound_redis::Error>> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        Ok(send(self.command(&conn, "GET", Repeat::Idempotent, cmd)?).await)
    }

    async fn set(
        &mut self,
        conn: Resource<Connection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), outbound_redis::Error>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        Ok(send(self.command(&conn, "SET", Repeat::Idempotent, cmd)?).await)
    }

    async fn incr(
        &mut self,
        conn: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<i64, outbound_redis::Error>> {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(key);
        Ok(send(self.command(&conn, "INCR", Repeat::Once, cmd)?).await)
    }

    async fn del(
        &mut self,
        conn: Resource<Connection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        Ok(send(self.command(&conn, "DEL", Repeat::Once, cmd)?).await)
    }

    async fn sadd(
        &mut self,
        conn: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(key).arg(values);
        Ok(send(self.command(&conn, "SADD", Repeat::Once, cmd)?).await)
    }

    async fn smembers(
        &mut self,
        conn: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(key);
        Ok(send(self.command(&conn, "SMEMBERS", Repeat::Idempotent, cmd)?).await)
    }

    async fn srem(
        &mut self,
        conn: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SREM");
        cmd.arg(key).arg(values);
        Ok(send(self.command(&conn, "SREM", Repeat::Once, cmd)?).await)
    }

    async fn execute(
        &mut self,
        conn: Resource<Connection>,
        command: String,
        arguments: Vec<outbound_redis::RedisParameter>,
    ) -> wasmtime::Result<Result<Vec<outbound_redis::RedisResult>, outbound_redis::Error>> {
        let mut cmd = redis::cmd(&command);
        let span_name = command.to_ascii_uppercase();
        for argument in arguments {
            match argument {
                outbound_redis::RedisParameter::Int64(i) => cmd.arg(i),
                outbound_redis::RedisParameter::Binary(b) => cmd.arg(b),
            };
        }
        let reply = Ok::<_, wasmtime::Error>(
            send::<redis::Value>(self.command(&conn, span_name, Repeat::Once, cmd)?).await,
        )?;
        Ok(reply.map(|value| {
            let mut results = Vec::new();
            flatten_reply(value, &mut results);
            results
        }))
    }

    async fn drop(&mut self, conn: Resource<Connection>) -> wasmtime::Result<()> {
        self.table.delete(conn)?;
        Ok(())
    }
}

/// A Redis reply as the flat list `execute` returns (arrays are spread out).
fn flatten_reply(value: redis::Value, out: &mut Vec<outbound_redis::RedisResult>) {
    use outbound_redis::RedisResult as R;
    match value {
        redis::Value::Nil => out.push(R::Nil),
        redis::Value::Int(i) => out.push(R::Int64(i)),
        redis::Value::BulkString(b) => out.push(R::Binary(b)),
        redis::Value::SimpleString(s) => out.push(R::Status(s)),
        redis::Value::Okay => out.push(R::Status("OK".to_owned())),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                flatten_reply(item, out);
            }
        }
        // RESP3 replies, given back as RESP2 would have given them.
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                flatten_reply(k, out);
                flatten_reply(v, out);
            }
        }
        redis::Value::Attribute { data, .. } => flatten_reply(*data, out),
        redis::Value::Double(d) => out.push(R::Binary(d.to_string().into_bytes())),
        redis::Value::Boolean(b) => out.push(R::Int64(b.into())),
        redis::Value::VerbatimString { text, .. } => out.push(R::Binary(text.into_bytes())),
        other => out.push(R::Binary(format!("{other:?}").into_bytes())),
    }
}
