//! The Forge app that connects a site to hookrelay through Forge Remote:
//! `hookrelay forge manifest` and `hookrelay forge init DIR`. (TODO)
