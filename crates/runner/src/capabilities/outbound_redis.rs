//! Spin's outbound Redis (`fermyon:spin/redis@2.0.0`), as Spin's `factor-outbound-redis`:
//! connections only to addresses in `allowed_outbound_hosts`, a connection of its own
//! for every `open`, and a client span per command under the guest's active span.
//!
//! A connection per `open` is what Spin does, and it is observable: whatever a guest
//! sets on its connection through `execute` (`SELECT`, `MULTI`, `CLIENT SETNAME`...)
//! stays on it and reaches no other connection or instance, and a command that fails
//! because Redis went away is not sent again on another connection. Each order then
//! costs one connection set-up, as it does on Spin.

use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue as Attribute;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};

use super::allowed_hosts::AllowedHosts;
use super::otel::{HostSpan, Parent, TraceScope};

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

/// An opened connection: its own TCP connection to Redis, closed when the guest drops
/// it or the instance ends.
pub struct Connection {
    link: MultiplexedConnection,
}

/// The outbound Redis state of one instance.
pub struct OutboundRedis {
    component: String,
    allowed: AllowedHosts,
    table: ResourceTable,
    trace: TraceScope,
}

impl OutboundRedis {
    pub fn new(component: &str, allowed: AllowedHosts, trace: TraceScope) -> OutboundRedis {
        OutboundRedis {
            component: component.to_owned(),
            allowed,
            table: ResourceTable::new(),
            trace,
        }
    }

    /// A handle on the connection (a multiplexed connection's handles share its link).
    fn connection(&self, conn: &Resource<Connection>) -> wasmtime::Result<MultiplexedConnection> {
        Ok(self.table.get(conn)?.link.clone())
    }

    fn span(&self, name: impl Into<std::borrow::Cow<'static, str>>) -> HostSpan {
        self.trace.span(
            name,
            SpanKind::Client,
            Parent::ActiveGuestSpan,
            vec![Attribute::new("db.system.name", "redis")],
        )
    }

    /// A command for the connection, in a span named after the command (as Spin names
    /// them: `PUBLISH`, `GET`...; `execute`'s after the command it runs). Owned, so that
    /// no borrow of the instance state (which is not `Sync`) is held while it is sent.
    fn command(
        &self,
        conn: &Resource<Connection>,
        name: impl Into<std::borrow::Cow<'static, str>>,
        cmd: redis::Cmd,
    ) -> wasmtime::Result<Command> {
        Ok(Command {
            span: self.span(name),
            link: self.connection(conn)?,
            cmd,
        })
    }
}

struct Command {
    span: HostSpan,
    link: MultiplexedConnection,
    cmd: redis::Cmd,
}

/// Sends `command` once, on its connection: as on Spin, a failure is the guest's to
/// handle (the connection does not come back; the guest may open another).
async fn send<T: redis::FromRedisValue>(command: Command) -> Result<T, outbound_redis::Error> {
    let Command {
        mut span,
        mut link,
        cmd,
    } = command;
    let result = cmd.query_async(&mut link).await;
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
        // As Spin: an address the client cannot parse is `invalid-address`; one it
        // cannot connect to is `other`, with the reason.
        let client = match redis::Client::open(address.as_str()) {
            Ok(client) => client,
            Err(e) => {
                span.fail(e.to_string());
                return Ok(Err(outbound_redis::Error::InvalidAddress));
            }
        };
        // As Spin's (redis-rs 0.32's `AsyncConnectionConfig::new()`): no connect or
        // response timeout. redis-rs 1's defaults (1 s, 500 ms) would fail a command
        // that Spin waits for, such as a `BLPOP` Redis holds.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(link) => Ok(Ok(self.table.push(Connection { link })?)),
            Err(e) => {
                span.fail(e.to_string());
                tracing::debug!(component = %self.component, address = shown, "outbound Redis connection failed: {e}");
                Ok(Err(outbound_redis::Error::Other(e.to_string())))
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
        let result =
            Ok::<_, wasmtime::Error>(send::<i64>(self.command(&conn, "PUBLISH", cmd)?).await)?;
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
        Ok(send(self.command(&conn, "GET", cmd)?).await)
    }

    async fn set(
        &mut self,
        conn: Resource<Connection>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), outbound_redis::Error>> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        Ok(send(self.command(&conn, "SET", cmd)?).await)
    }

    async fn incr(
        &mut self,
        conn: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<i64, outbound_redis::Error>> {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(key);
        Ok(send(self.command(&conn, "INCR", cmd)?).await)
    }

    async fn del(
        &mut self,
        conn: Resource<Connection>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(keys);
        Ok(send(self.command(&conn, "DEL", cmd)?).await)
    }

    async fn sadd(
        &mut self,
        conn: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SADD");
        cmd.arg(key).arg(values);
        Ok(send(self.command(&conn, "SADD", cmd)?).await)
    }

    async fn smembers(
        &mut self,
        conn: Resource<Connection>,
        key: String,
    ) -> wasmtime::Result<Result<Vec<String>, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(key);
        Ok(send(self.command(&conn, "SMEMBERS", cmd)?).await)
    }

    async fn srem(
        &mut self,
        conn: Resource<Connection>,
        key: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Result<u32, outbound_redis::Error>> {
        let mut cmd = redis::cmd("SREM");
        cmd.arg(key).arg(values);
        Ok(send(self.command(&conn, "SREM", cmd)?).await)
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
            send::<redis::Value>(self.command(&conn, span_name, cmd)?).await,
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
