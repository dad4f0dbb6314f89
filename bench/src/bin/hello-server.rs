//! tonic's stock hello-world server (examples/src/helloworld/server.rs),
//! the reference the echo server's throughput is compared with.

use std::net::SocketAddr;

use clap::Parser;
use tonic::{Request, Response, Status, transport::Server};

use bench::hello::greeter_server::{Greeter, GreeterServer};
use bench::hello::{HelloReply, HelloRequest};

#[derive(Parser)]
#[command(about = "tonic hello-world Greeter, for `bench`")]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
}

#[derive(Default)]
struct MyGreeter;

#[tonic::async_trait]
impl Greeter for MyGreeter {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let reply = HelloReply {
            message: format!("Hello {}!", request.into_inner().name),
        };
        Ok(Response::new(reply))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    eprintln!("hello-server listening on {}", args.addr);
    Server::builder()
        .add_service(GreeterServer::new(MyGreeter))
        .serve(args.addr)
        .await?;
    Ok(())
}
